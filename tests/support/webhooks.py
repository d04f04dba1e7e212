"""Webhook endpoints on a test pipeline, pointed at a test receiver, and what they got."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from streams.webhooks.signing import new_secret
from tests.support.archive import eventually
from tests.support.pipeline import Pipeline, Process
from tests.support.receiver import Receiver


@dataclass(frozen=True)
class Endpoint:
    tenant_id: str
    webhook_id: str
    path: str
    secret: str


async def subscribe(
    pipeline: Pipeline,
    receiver: Receiver,
    tenant_id: str,
    types: Sequence[str] = ("*",),
    *,
    ordered: bool = False,
    url: str | None = None,
) -> Endpoint:
    """Publish ``webhook.subscribed`` and wait until the subscriptions hold it."""
    webhook_id = f"wh_{uuid.uuid4().hex[:12]}"
    endpoint = Endpoint(tenant_id, webhook_id, f"/{tenant_id}/{webhook_id}", new_secret())
    receiver.expect(endpoint.path, endpoint.secret)
    await pipeline.publish(
        "webhook.subscribed",
        tenant_id=tenant_id,
        subject=webhook_id,
        data={
            "webhook_id": webhook_id,
            "url": url or receiver.url(endpoint.path),
            "event_types": list(types),
            "secret": endpoint.secret,
            "ordered": ordered,
        },
    )

    async def known() -> bool:
        return bool(
            await pipeline.pool.fetchval(
                "SELECT count(*) FROM webhook_subscriptions WHERE tenant_id = $1 "
                "AND webhook_id = $2",
                tenant_id,
                webhook_id,
            )
        )

    await eventually(known, timeout=30)
    return endpoint


async def publish_budgets(
    pipeline: Pipeline, tenant_id: str, count: int, *, subject: str = "proj-1"
) -> list[str]:
    """``count`` budget.set events of a tenant (on one subject: one partition, in order);
    returns their ids."""
    ids = []
    for n in range(count):
        delivery = await pipeline.publish(
            "budget.set",
            tenant_id=tenant_id,
            subject=subject,
            data={"project_id": subject, "amount_micros": 1_000_000 * (n + 1)},
        )
        ids.append(str(delivery.event_id))
    return ids


async def wait_delivered(
    receiver: Receiver, endpoint: Endpoint, event_ids: Sequence[str], timeout: float = 30
) -> None:
    """Until every one of ``event_ids`` was delivered (verified, 2xx) to ``endpoint``."""
    wanted = set(event_ids)

    def done() -> bool:
        return wanted <= {r.event_id for r in receiver.delivered(endpoint.path)}

    await eventually(done, timeout=timeout)


async def logged(pipeline: Pipeline, endpoint: Endpoint) -> dict[str, dict[str, Any]]:
    """The delivery log (projection) of an endpoint, by delivery id."""
    rows = await pipeline.pool.fetch(
        "SELECT * FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2",
        endpoint.tenant_id,
        endpoint.webhook_id,
    )
    return {row["delivery_id"]: dict(row) for row in rows}


async def attempts(pipeline: Pipeline, endpoint: Endpoint) -> list[dict[str, Any]]:
    """Every logged attempt of an endpoint's deliveries, by delivery then attempt."""
    rows = await pipeline.pool.fetch(
        "SELECT a.* FROM webhook_delivery_attempts a JOIN webhook_deliveries d "
        "ON d.tenant_id = a.tenant_id AND d.delivery_id = a.delivery_id "
        "WHERE d.tenant_id = $1 AND d.webhook_id = $2 ORDER BY a.delivery_id, a.attempt",
        endpoint.tenant_id,
        endpoint.webhook_id,
    )
    return [dict(row) for row in rows]


#: Worker settings for tests: retries within seconds, loopback receivers allowed.
FAST_RETRIES = {
    "LEDGERBUS_WEBHOOK_RETRY_SCHEDULE": "0.2s,0.5s,1s,2s",
    "LEDGERBUS_WEBHOOK_TIMEOUT": "1s",
    "LEDGERBUS_WEBHOOK_LEASE_MARGIN": "2s",
}
ALLOW_LOOPBACK = {"LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}


@asynccontextmanager
async def streams_worker(pipeline: Pipeline, **env: str) -> AsyncIterator[Process]:
    """A ``ledgerbus streams`` worker with extra settings, stopped cleanly at the end."""
    worker = pipeline.start("streams", extra_env=env)
    try:
        await worker.wait_ready()
        yield worker
    finally:
        if worker.popen.poll() is None:
            assert await worker.stop() == 0
