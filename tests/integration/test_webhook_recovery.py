"""No delivery is lost when workers die: SIGKILL with retries pending, and one of two
workers SIGKILLed mid-stream (at least once to the receiver, exactly once in the log)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.pipeline import Pipeline, open_pipeline
from tests.support.receiver import Answer, Receiver
from tests.support.webhooks import (
    ALLOW_LOOPBACK,
    FAST_RETRIES,
    attempts,
    logged,
    publish_budgets,
    streams_worker,
    subscribe,
    wait_delivered,
)

pytestmark = pytest.mark.slow

#: Slower retries than FAST_RETRIES, so none runs out while a worker restarts.
ENV = {**FAST_RETRIES, **ALLOW_LOOPBACK, "LEDGERBUS_WEBHOOK_RETRY_SCHEDULE": "0.5s,1s,2s,4s"}


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(
        stack, registry_url, tmp_path_factory.mktemp("recovery"), workers=0, extra_env=ENV
    ) as running:
        yield running


async def test_restart_during_pending_retries_loses_none(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    tenant = pipeline.new_tenant()
    async with streams_worker(pipeline) as doomed:
        endpoint = await subscribe(pipeline, receiver, tenant)
        receiver.answer(endpoint.path, Answer(500), times=10)
        ids = await publish_budgets(pipeline, tenant, 10)

        async def all_failed_once() -> bool:
            return len({r.event_id for r in receiver.received(endpoint.path)}) == 10

        await eventually(all_failed_once, timeout=30)
        doomed.kill()
    pending = await pipeline.pool.fetchval(
        "SELECT count(*) FROM webhook_queue WHERE tenant_id = $1 AND status <> 'succeeded'",
        tenant,
    )
    assert pending == 10
    async with streams_worker(pipeline):
        await wait_delivered(receiver, endpoint, ids)
    for event_id in ids:
        seen = [r for r in receiver.received(endpoint.path) if r.event_id == event_id]
        assert len({r.webhook_id for r in seen}) == 1  # the same webhook-id on every attempt
        assert seen[0].status == 500 and seen[-1].ok


async def test_one_of_two_workers_killed_mid_stream_loses_and_doubles_nothing(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    tenant = pipeline.new_tenant()
    async with streams_worker(pipeline) as first, streams_worker(pipeline):
        endpoint = await subscribe(pipeline, receiver, tenant)
        ids: list[str] = []
        for batch in range(20):
            ids += await publish_budgets(pipeline, tenant, 10, subject=f"proj-{batch % 7}")
            if batch == 8:
                first.kill()
            await asyncio.sleep(0.05)
        await wait_delivered(receiver, endpoint, ids, timeout=90)

        async def logged_once() -> bool:
            rows = (await logged(pipeline, endpoint)).values()
            return sum(1 for row in rows if row["status"] == "succeeded") == len(ids)

        await eventually(logged_once, timeout=60)
    successes = Counter(
        a["delivery_id"] for a in await attempts(pipeline, endpoint) if a["succeeded"]
    )
    assert len(successes) == 200
    assert set(successes.values()) == {1}  # exactly one logged success per delivery
    queued = await pipeline.pool.fetch(
        "SELECT status, count(*) AS n FROM webhook_queue WHERE tenant_id = $1 GROUP BY status",
        tenant,
    )
    assert {row["status"]: row["n"] for row in queued} == {"succeeded": 200}
    assert {r.event_id for r in receiver.delivered(endpoint.path)} == set(ids)
