"""The gateway in front of a running pipeline: HTTP requests that stream processors answer.

``open_deployment`` starts a private pipeline (archiver + streams worker) and
serves the real gateway on its database and topic prefix, so an approval
decided over HTTP is judged by the real approvals processor, a budget set
over HTTP is applied by the real budget processor, and the agent directory
is projected from the real archive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import ConsumerRecord

from event_store.projections import Projection
from gateway.settings import GatewaySettings
from tests.conftest import StackUnderTest
from tests.support.budgets import of_tenant, topic_records
from tests.support.gateway import RunningGateway, gateway_endpoints, serve_gateway
from tests.support.pipeline import Pipeline, open_pipeline

#: Generous: on a loaded 2-core machine a decision can take seconds; the 202
#: path is tested on its own with a short wait.
DECISION_WAIT_SECONDS = 20.0


@dataclass
class Deployment:
    pipeline: Pipeline
    gateway: RunningGateway

    @asynccontextmanager
    async def client(self, tenant: str, role: str = "admin") -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client with a fresh API key of ``role`` in ``tenant``."""
        async with self.gateway.client(await self.gateway.key(tenant, role)) as client:
            yield client

    async def published(self, topic: str, tenant: str) -> list[ConsumerRecord]:
        """Every record ``tenant`` has on the logical ``topic``."""
        return of_tenant(await topic_records(self.pipeline, topic), tenant)


@asynccontextmanager
async def open_deployment(
    stack: StackUnderTest,
    registry_url: str,
    log_dir: Path,
    *,
    extra_env: Mapping[str, str] = {},
) -> AsyncIterator[Deployment]:
    """``extra_env`` goes to the workers and, while the gateway runs, to this process
    too: the webhook routes read ``LEDGERBUS_WEBHOOK_*`` when the app is built."""
    async with open_pipeline(stack, registry_url, log_dir, extra_env=extra_env) as pipeline:
        endpoints = gateway_endpoints(
            stack,
            registry_url,
            database_url=pipeline.database_url,
            topic_prefix=pipeline.topic_prefix,
        )
        settings = GatewaySettings(
            redis_key_prefix=f"test:{pipeline.topic_prefix}",
            approval_wait_seconds=DECISION_WAIT_SECONDS,
        )
        with pytest.MonkeyPatch.context() as patch:
            for name, value in extra_env.items():
                patch.setenv(name, value)
            async with serve_gateway(endpoints, settings) as gateway:
                yield Deployment(pipeline, gateway)


async def dump_projection(
    pool: asyncpg.Pool, projection: Projection
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the projection's tables, sorted, for before/after comparisons."""
    return {
        table: sorted(
            (tuple(row.values()) for row in await pool.fetch(f'SELECT * FROM "{table}"')),
            key=repr,
        )
        for table in projection.tables
    }


async def caught_up(
    pool: asyncpg.Pool, projection: Projection, tenants: Sequence[str] = ()
) -> bool:
    """Whether the projection runner has applied every archived event (of
    ``tenants``, or of everyone when none are named)."""
    behind = await pool.fetchval(
        """
        SELECT count(*) FROM chain_heads h LEFT JOIN projection_checkpoints c
          ON c.tenant_id = h.tenant_id AND c.projection = $1
        WHERE h.position > coalesce(c.position, 0)
          AND (cardinality($2::text[]) = 0 OR h.tenant_id = ANY($2::text[]))
        """,
        projection.name,
        list(tenants),
    )
    return bool(behind == 0)
