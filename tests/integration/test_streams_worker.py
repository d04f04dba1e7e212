"""The streams worker as a process: starts, serves metrics, stops cleanly, projects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.pipeline import Pipeline, open_pipeline


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(stack, registry_url, tmp_path_factory.mktemp("streams")) as running:
        yield running


async def test_worker_runs_the_projection_runner(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    for n in range(3):
        await pipeline.publish(
            "budget.set",
            tenant_id=tenant,
            subject="proj-1",
            data={"project_id": "proj-1", "amount_micros": 1_000 * (n + 1)},
        )

    async def counted() -> bool:
        count = await pipeline.pool.fetchval(
            "SELECT count FROM event_counts WHERE tenant_id = $1 AND type = 'budget.set'", tenant
        )
        return bool(count == 3)

    await eventually(counted, timeout=30)


async def test_sigterm_stops_the_worker_cleanly(pipeline: Pipeline, tmp_path: Path) -> None:
    worker = pipeline.start("streams", "--group", f"{pipeline.topic_prefix}second")
    await worker.wait_ready()
    assert await worker.stop() == 0
