"""Approvals against SIGKILL: a worker killed mid-stream neither loses nor doubles a
verdict, and an expiry nobody was running for happens once a worker is back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from schemas.models import Envelope
from streams.approvals import get_approval, list_approvals
from tests.conftest import StackUnderTest
from tests.support.approvals import (
    VERDICTS,
    decision,
    request_approval,
    verdicts_by_approval,
    wait_approval,
)
from tests.support.archive import eventually
from tests.support.pipeline import Pipeline, Process, open_pipeline

pytestmark = pytest.mark.slow

APPROVALS = 200
REJECTED = "approval.decision_rejected"


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    log_dir = tmp_path_factory.mktemp("approvals-kill")
    async with open_pipeline(stack, registry_url, log_dir, workers=2) as running:
        yield running


def running_workers(pipeline: Pipeline) -> list[Process]:
    return [
        process
        for process in pipeline.processes
        if process.name.startswith("streams") and process.popen.poll() is None
    ]


async def count_events(pipeline: Pipeline, tenant: str, *types: str) -> int:
    return int(
        await pipeline.pool.fetchval(
            "SELECT count(*) FROM events WHERE tenant_id = $1 AND type = ANY($2::text[])",
            tenant,
            list(types),
        )
    )


async def pending(pipeline: Pipeline, tenant: str) -> int:
    return len(await list_approvals(pipeline.pool, tenant, "pending", limit=1000))


async def test_a_sigkilled_worker_neither_loses_nor_doubles_a_verdict(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    ids = [await request_approval(pipeline, tenant) for _ in range(APPROVALS)]
    await eventually(lambda: _all_pending(pipeline, tenant), timeout=60, interval=0.2)
    # One or two competing decisions each, under their own subjects: spread over
    # partitions, so over both workers, which then decide on one approval at once.
    commands = [
        decision(
            tenant,
            approval_id,
            verdict=("approve", "deny")[n],
            decider=f"decider-{n}",
            subject=f"{approval_id}-{n}",
        )
        for index, approval_id in enumerate(ids)
        for n in range(1 + index % 2)
    ]

    async def publish_gradually() -> None:
        for start in range(0, len(commands), 20):
            await pipeline.publisher.publish_many(commands[start : start + 20])
            await asyncio.sleep(0.2)

    publishing = asyncio.create_task(publish_gradually())
    outcomes = (*VERDICTS, REJECTED)
    await eventually(lambda: _at_least(pipeline, tenant, len(commands) // 4, outcomes), timeout=60)
    victim = running_workers(pipeline)[0]
    victim.kill()
    assert await count_events(pipeline, tenant, *outcomes) < len(commands), "killed too late"
    await publishing
    await pipeline.start("streams").wait_ready()

    await eventually(
        lambda: _at_least(pipeline, tenant, len(commands), outcomes), timeout=120, interval=0.5
    )
    await eventually(lambda: _none_pending(pipeline, tenant), timeout=30, interval=0.2)
    verdicts = await verdicts_by_approval(pipeline, tenant)
    rejections = await pipeline.archived(tenant, REJECTED)
    assert {approval_id: len(events) for approval_id, events in verdicts.items()} == {
        approval_id: 1 for approval_id in ids
    }
    winners = [str(events[0].causation_id) for events in verdicts.values()]
    losers = [str(rejection.causation_id) for rejection in rejections]
    assert sorted(winners + losers) == sorted(str(command.id) for command in commands)
    assert {rejection.data.reason for rejection in rejections} == {"already_decided"}
    await _assert_rows_match(pipeline, tenant, verdicts)


async def _assert_rows_match(
    pipeline: Pipeline, tenant: str, verdicts: dict[str, list[Envelope[Any]]]
) -> None:
    """Each approval's row holds its one archived verdict and what decided it: the
    winning command, or the expiry itself."""
    for approval_id, [verdict] in verdicts.items():
        approval = await get_approval(pipeline.pool, tenant, approval_id)
        assert approval is not None
        assert approval.status == verdict.type.removeprefix("approval.")
        assert approval.verdict_event_id == verdict.id
        expired = verdict.type == "approval.expired"
        deciding = verdict.id if expired else uuid.UUID(verdict.causation_id)
        assert approval.deciding_event_id == deciding


async def _all_pending(pipeline: Pipeline, tenant: str) -> bool:
    return await pending(pipeline, tenant) == APPROVALS


async def _none_pending(pipeline: Pipeline, tenant: str) -> bool:
    return await pending(pipeline, tenant) == 0


async def _at_least(pipeline: Pipeline, tenant: str, count: int, types: tuple[str, ...]) -> bool:
    return await count_events(pipeline, tenant, *types) >= count


async def test_approvals_due_while_no_worker_ran_expire_after_a_restart(
    pipeline: Pipeline,
) -> None:
    tenant = pipeline.new_tenant()
    ids = [
        await request_approval(pipeline, tenant, expires_in=timedelta(seconds=4)) for _ in range(3)
    ]
    for approval_id in ids:
        await wait_approval(pipeline, tenant, approval_id, "pending")
    for worker in running_workers(pipeline):
        worker.kill()
    approval = await get_approval(pipeline.pool, tenant, ids[-1])
    assert approval is not None

    async def past_deadline() -> bool:
        return bool(await pipeline.pool.fetchval("SELECT now() > $1", approval.expires_at))

    await eventually(past_deadline, timeout=30, interval=0.2)
    assert await pending(pipeline, tenant) == len(ids)  # nobody was there to expire them

    await pipeline.start("streams").wait_ready()
    for approval_id in ids:
        await wait_approval(pipeline, tenant, approval_id, "expired")
    await eventually(
        lambda: _at_least(pipeline, tenant, len(ids), VERDICTS), timeout=30, interval=0.2
    )
    verdicts = await verdicts_by_approval(pipeline, tenant)
    assert sorted(verdicts) == sorted(ids)
    assert {len(events) for events in verdicts.values()} == {1}
    assert {events[0].type for events in verdicts.values()} == {"approval.expired"}
    await _assert_rows_match(pipeline, tenant, verdicts)
