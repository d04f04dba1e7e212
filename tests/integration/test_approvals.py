"""Approvals through the real pipeline: one verdict or a rejection, never two verdicts."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from event_store.projections import ProjectedEvent
from producers.publisher import build_event
from schemas.models import Envelope
from streams.approval_processor import expired_event, expiry_id
from streams.approvals import (
    ApprovalsProjection,
    ApprovalStatus,
    get_approval,
    get_rejection,
    list_approvals,
)
from streams.context import derived_id
from tests.conftest import StackUnderTest
from tests.support.approvals import (
    PERMISSION,
    VERDICTS,
    decision,
    request_approval,
    verdicts_by_approval,
    wait_approval,
    wait_archived,
)
from tests.support.archive import eventually
from tests.support.budgets import header, of_tenant, topic_records
from tests.support.cli import run_cli
from tests.support.pipeline import CATALOG, Pipeline, Process, open_pipeline

REJECTED = "approval.decision_rejected"


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(stack, registry_url, tmp_path_factory.mktemp("approvals")) as running:
        yield running


async def pending_approval(pipeline: Pipeline, tenant: str) -> str:
    approval_id = await request_approval(pipeline, tenant)
    await wait_approval(pipeline, tenant, approval_id, "pending")
    return approval_id


@pytest.mark.parametrize(("verdict", "status"), [("approve", "approved"), ("deny", "denied")])
async def test_a_decision_becomes_the_verdict(
    pipeline: Pipeline, verdict: str, status: str
) -> None:
    tenant = pipeline.new_tenant()
    approval_id = await pending_approval(pipeline, tenant)
    command = decision(tenant, approval_id, verdict=verdict, decider="grace")
    await pipeline.publisher.publish(command)

    approval = await wait_approval(pipeline, tenant, approval_id, status)
    [event] = await wait_archived(pipeline, tenant, 1, *VERDICTS)
    assert event.type == f"approval.{status}"
    assert event.id == derived_id(command.id, "verdict") == approval.verdict_event_id
    assert event.causation_id == str(command.id)
    assert (event.data.decider, event.data.comment) == ("grace", f"grace says {verdict}")
    assert event.data.run_id == approval.run_id == f"run-{approval_id}"
    assert approval.deciding_event_id == command.id
    assert (approval.decider, approval.decided_at) == ("grace", command.time)
    # The processor folds the approvals topic in; it must not echo what it reads.
    await asyncio.sleep(1.0)
    copies = Counter(
        header(record, "ce_id") for record in await topic_records(pipeline, "approvals")
    )
    [request] = await pipeline.archived(tenant, "approval.requested")
    assert copies[str(request.id).encode()] == copies[str(event.id).encode()] == 1


async def test_a_second_decision_is_rejected_as_already_decided(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    approval_id = await pending_approval(pipeline, tenant)
    first = decision(tenant, approval_id, verdict="approve", decider="ada")
    second = decision(tenant, approval_id, verdict="deny", decider="bob")
    await pipeline.publisher.publish_many([first, second])

    [rejection] = await wait_archived(pipeline, tenant, 1, REJECTED)
    assert rejection.causation_id == str(second.id)
    assert (rejection.data.reason, rejection.data.detail) == ("already_decided", "already approved")
    assert (rejection.data.decider, rejection.data.verdict) == ("bob", "deny")
    assert [e.type for e in await pipeline.archived(tenant, *VERDICTS)] == ["approval.approved"]
    approval = await wait_approval(pipeline, tenant, approval_id, "approved")
    assert (approval.deciding_event_id, approval.decider) == (first.id, "ada")
    recorded = await get_rejection(pipeline.pool, tenant, str(second.id))
    assert recorded is not None and recorded.reason == "already_decided"
    assert await get_rejection(pipeline.pool, tenant, str(first.id)) is None


async def test_the_same_command_twice_gives_one_verdict(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    approval_id = await pending_approval(pipeline, tenant)
    command = decision(tenant, approval_id)
    await pipeline.publisher.publish(command)
    await pipeline.publisher.publish(command)
    # Same subject, same partition: once this one is answered, both copies were handled.
    barrier = decision(tenant, approval_id, decider="bob")
    await pipeline.publisher.publish(barrier)

    [rejection] = await wait_archived(pipeline, tenant, 1, REJECTED)
    assert rejection.causation_id == str(barrier.id)
    [verdict] = await pipeline.archived(tenant, *VERDICTS)
    assert verdict.id == derived_id(command.id, "verdict")
    assert len(await pipeline.archived(tenant, REJECTED)) == 1


async def test_a_decision_dated_after_the_deadline_expires_the_approval(
    pipeline: Pipeline,
) -> None:
    tenant = pipeline.new_tenant()
    approval_id = await pending_approval(pipeline, tenant)  # the timer is an hour away
    approval = await get_approval(pipeline.pool, tenant, approval_id)
    assert approval is not None
    late = decision(tenant, approval_id, time=approval.expires_at + timedelta(seconds=1))
    later = decision(tenant, approval_id, time=approval.expires_at + timedelta(seconds=2))
    await pipeline.publisher.publish_many([late, later, late])

    rejections = await wait_archived(pipeline, tenant, 2, REJECTED)
    assert [(r.causation_id, r.data.reason) for r in rejections] == [
        (str(late.id), "expired"),
        (str(later.id), "expired"),
    ]
    [expired] = await pipeline.archived(tenant, *VERDICTS)
    assert expired.type == "approval.expired"
    assert expired.data.expired_at == expired.time == approval.expires_at
    expired_row = await wait_approval(pipeline, tenant, approval_id, "expired")
    assert expired_row.verdict_event_id == expired_row.deciding_event_id == expired.id
    assert expired_row.decided_at == approval.expires_at


async def test_the_timer_expires_an_undecided_approval(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    approval_id = await request_approval(pipeline, tenant, expires_in=timedelta(seconds=2))
    approval = await wait_approval(pipeline, tenant, approval_id, "expired")
    [expired] = await wait_archived(pipeline, tenant, 1, *VERDICTS)
    assert expired.type == "approval.expired"
    assert expired.id == approval.verdict_event_id
    assert expired.data.expired_at == approval.expires_at == approval.decided_at

    late = decision(tenant, approval_id)
    await pipeline.publisher.publish(late)
    [rejection] = await wait_archived(pipeline, tenant, 1, REJECTED)
    assert (rejection.causation_id, rejection.data.reason) == (str(late.id), "expired")
    assert [e.id for e in await pipeline.archived(tenant, *VERDICTS)] == [expired.id]


async def test_another_tenants_approval_is_not_found(pipeline: Pipeline) -> None:
    owner, intruder = pipeline.new_tenant(), pipeline.new_tenant()
    approval_id = await pending_approval(pipeline, owner)
    foreign = decision(intruder, approval_id)
    unknown = decision(intruder, "appr-nobody-asked")
    await pipeline.publisher.publish_many([foreign, unknown])

    rejections = await wait_archived(pipeline, intruder, 2, REJECTED)
    assert {r.causation_id: r.data.reason for r in rejections} == {
        str(foreign.id): "not_found",
        str(unknown.id): "not_found",
    }
    # Same words for both: nothing says the first one exists elsewhere.
    assert {r.data.detail for r in rejections} == {"no such approval"}
    assert await pipeline.archived(intruder, *VERDICTS) == []
    assert await get_approval(pipeline.pool, intruder, approval_id) is None
    still = await get_approval(pipeline.pool, owner, approval_id)
    assert still is not None and still.status == "pending"
    assert await pipeline.archived(owner, REJECTED, *VERDICTS) == []


async def test_a_decider_without_the_permission_is_forbidden(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    approval_id = await pending_approval(pipeline, tenant)
    forbidden = decision(tenant, approval_id, decider="eve", permissions=["approvals:read"])
    unknown = decision(tenant, approval_id, verdict="unknown")
    await pipeline.publisher.publish_many([forbidden, unknown])

    rejections = await wait_archived(pipeline, tenant, 2, REJECTED)
    assert [(r.causation_id, r.data.reason) for r in rejections] == [
        (str(forbidden.id), "forbidden"),
        (str(unknown.id), "unknown"),
    ]
    assert rejections[0].data.detail == "deciding needs the permission approvals:approve"
    still = await get_approval(pipeline.pool, tenant, approval_id)
    assert still is not None and still.status == "pending" and still.decider is None

    allowed = decision(tenant, approval_id, decider="ada")
    await pipeline.publisher.publish(allowed)
    approval = await wait_approval(pipeline, tenant, approval_id, "approved")
    assert approval.deciding_event_id == allowed.id


async def test_twenty_decisions_at_once_give_one_verdict(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    approval_id = await pending_approval(pipeline, tenant)
    commands = [
        decision(tenant, approval_id, verdict=("approve", "deny")[n % 2], decider=f"d{n}")
        for n in range(20)
    ]
    await asyncio.gather(*(pipeline.publisher.publish(command) for command in commands))

    rejections = await wait_archived(pipeline, tenant, 19, REJECTED)
    [verdict] = await pipeline.archived(tenant, *VERDICTS)
    winner = {str(c.id): c for c in commands}[str(verdict.causation_id)]
    assert {r.causation_id for r in rejections} == {str(c.id) for c in commands} - {str(winner.id)}
    assert {r.data.reason for r in rejections} == {"already_decided"}
    approval = await get_approval(pipeline.pool, tenant, approval_id)
    assert approval is not None and approval.deciding_event_id == winner.id


async def test_an_expiry_that_was_never_published_is_published_again(
    pipeline: Pipeline,
) -> None:
    """The state a crash between the timer's commit and its publish leaves behind."""
    tenant = pipeline.new_tenant()
    approval_id = await pending_approval(pipeline, tenant)
    async with pipeline.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM approvals WHERE tenant_id = $1 AND approval_id = $2",
            tenant,
            approval_id,
        )
        assert row is not None
        event = expired_event(CATALOG, row)
        await ApprovalsProjection().apply(conn, ProjectedEvent(0, event))
        await conn.execute(
            "INSERT INTO approval_expiry_outbox VALUES ($1, $2, now() - interval '1 hour')",
            tenant,
            approval_id,
        )

    [expired] = await wait_archived(pipeline, tenant, 1, *VERDICTS)
    assert expired.id == expiry_id(row) == event.id

    async def confirmed() -> bool:
        return not await pipeline.pool.fetchval(
            "SELECT count(*) FROM approval_expiry_outbox WHERE tenant_id = $1", tenant
        )

    await eventually(confirmed, timeout=30)


async def test_list_approvals_pages_and_filters(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    ids = sorted([await pending_approval(pipeline, tenant) for _ in range(3)])
    await pipeline.publisher.publish(decision(tenant, ids[1], verdict="deny"))
    await wait_approval(pipeline, tenant, ids[1], "denied")

    first = await list_approvals(pipeline.pool, tenant, limit=2)
    rest = await list_approvals(pipeline.pool, tenant, limit=2, after=first[-1].approval_id)
    assert [a.approval_id for a in first + rest] == ids
    pending = await list_approvals(pipeline.pool, tenant, ApprovalStatus.PENDING)
    assert [a.approval_id for a in pending] == [ids[0], ids[2]]
    assert [a.approval_id for a in await list_approvals(pipeline.pool, tenant, "denied")] == [
        ids[1]
    ]
    assert await list_approvals(pipeline.pool, pipeline.new_tenant()) == []
    with pytest.raises(ValueError, match="limit"):
        await list_approvals(pipeline.pool, tenant, limit=0)
    with pytest.raises(ValueError, match="'maybe'"):
        await list_approvals(pipeline.pool, tenant, "maybe")


async def test_text_postgresql_cannot_hold_is_dead_lettered_and_stalls_nothing(
    pipeline: Pipeline,
) -> None:
    tenant = pipeline.new_tenant()
    bad_request = await pipeline.publish(
        "approval.requested",
        tenant_id=tenant,
        subject="appr-nul",
        data={
            "approval_id": "appr-nul",
            "run_id": "run-nul",
            "agent_name": "deployer",
            "action": "drop \x00 table",
            "risk_level": "critical",
            "required_permission": PERMISSION,
            "expires_at": datetime.now(UTC) + timedelta(hours=1),
        },
    )
    bad_decision = decision(tenant, "appr-\x00", subject="appr-nul")
    await pipeline.publisher.publish(bad_decision)
    # Both agents go on, and so does the projection runner for this tenant.
    approval_id = await pending_approval(pipeline, tenant)
    await pipeline.publisher.publish(decision(tenant, approval_id))
    await wait_approval(pipeline, tenant, approval_id, "approved")
    await eventually(lambda: _projection_caught_up(pipeline), timeout=30, interval=0.2)

    assert await get_approval(pipeline.pool, tenant, "appr-nul") is None
    assert await pipeline.archived(tenant, REJECTED) == []
    dead = [
        (header(record, "ce_id"), header(record, "ledgerbus-dlq-reason"))
        for topic in ("approvals", "commands")
        for record in of_tenant(await topic_records(pipeline, topic, dead_letters=True), tenant)
    ]
    assert sorted(dead) == sorted(
        [
            (str(bad_request.event_id).encode(), b"invalid_text"),
            (str(bad_decision.id).encode(), b"invalid_text"),
        ]
    )


async def test_the_projection_gives_the_same_rows_in_any_order(pipeline: Pipeline) -> None:
    """The archive may hold a verdict before its request (other topic, other
    partition); applied in any order, any number of times, the rows agree."""
    approval_id, command_id = "appr-order", str(uuid.uuid4())
    expires_at = datetime.now(UTC) + timedelta(hours=1)

    def event(event_type: str, data: dict[str, Any], causation: str | None = None) -> Envelope[Any]:
        return build_event(
            CATALOG.get(event_type),
            subject=approval_id,
            tenant_id="order-template",
            data={"approval_id": approval_id, **data},
            source="test",
            causation_id=causation,
        )

    requested = event(
        "approval.requested",
        {
            "run_id": "run-1",
            "agent_name": "deployer",
            "action": "deploy",
            "risk_level": "high",
            "required_permission": PERMISSION,
            "expires_at": expires_at,
        },
    )
    approved = event(
        "approval.approved", {"run_id": "run-1", "decider": "ada", "comment": "ok"}, command_id
    )
    rejected = event(
        "approval.decision_rejected",
        {"decider": "bob", "verdict": "deny", "reason": "already_decided"},
        str(uuid.uuid4()),
    )
    expired = event("approval.expired", {"run_id": "run-1", "expired_at": expires_at})
    projection = ApprovalsProjection()
    outcomes = []
    async with pipeline.pool.acquire() as conn:
        scratch = conn.transaction()  # rolled back: rows no event in the archive backs
        await scratch.start()
        try:
            for order in itertools.permutations([requested, approved, rejected]):
                tenant = pipeline.new_tenant()
                for applied in [*order, *order, expired]:  # twice, then a late verdict
                    envelope = applied.model_copy(update={"tenant_id": tenant})
                    await projection.apply(conn, ProjectedEvent(0, envelope))
                outcomes.append(
                    (
                        await get_approval(conn, tenant, approval_id),
                        await get_rejection(conn, tenant, str(rejected.causation_id)),
                    )
                )
        finally:
            await scratch.rollback()
    assert all(outcome == outcomes[0] for outcome in outcomes)
    approval, rejection = outcomes[0]
    assert approval is not None and rejection is not None
    assert (approval.status, approval.action, approval.expires_at) == (
        "approved",
        "deploy",
        expires_at,
    )
    assert (approval.deciding_event_id, approval.verdict_event_id) == (
        uuid.UUID(command_id),
        approved.id,
    )
    assert (rejection.reason, rejection.event_id) == ("already_decided", rejected.id)


@pytest.fixture(scope="module")
async def second_group(pipeline: Pipeline) -> AsyncIterator[Process]:
    """A worker in another consumer group: it handles every command the
    pipeline's own worker handles, at the same time."""
    second = pipeline.start("streams", "--group", f"{pipeline.topic_prefix}approvals-second")
    await second.wait_ready()
    yield second
    assert await second.stop() == 0


def competing(tenant: str, approval_id: str, count: int) -> list[Envelope[Any]]:
    """Decisions under different subjects: they sit on different partitions, so
    each group meets them in its own order."""
    return [
        decision(
            tenant,
            approval_id,
            verdict=("approve", "deny")[n % 2],
            decider=f"decider-{n}",
            subject=f"{approval_id}-{n}",
        )
        for n in range(count)
    ]


def assert_one_outcome_each(
    commands: list[Envelope[Any]],
    verdicts: dict[str, list[Envelope[Any]]],
    rejections: list[Envelope[Any]],
) -> None:
    """One verdict per approval; every command either won or was refused, once."""
    approvals = {command.data.approval_id for command in commands}
    assert {approval_id: len(events) for approval_id, events in verdicts.items()} == {
        approval_id: 1 for approval_id in approvals
    }
    outcomes = [str(r.causation_id) for r in rejections] + [
        str(events[0].causation_id) for events in verdicts.values()
    ]
    assert sorted(outcomes) == sorted(str(c.id) for c in commands)
    assert {r.data.reason for r in rejections} == {"already_decided"}


async def test_two_groups_released_at_the_same_moment_give_one_verdict(
    pipeline: Pipeline, second_group: Process
) -> None:
    """The test holds the approval's row lock until both groups wait on it, so their
    decisions start at the same instant; they still take turns."""
    tenant = pipeline.new_tenant()
    commands: list[Envelope[Any]] = []
    for _ in range(5):
        approval_id = await pending_approval(pipeline, tenant)
        batch = competing(tenant, approval_id, 10)
        commands += batch
        async with pipeline.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT 1 FROM approvals WHERE tenant_id = $1 AND approval_id = $2 FOR UPDATE",
                tenant,
                approval_id,
            )
            await pipeline.publisher.publish_many(batch)
            await eventually(lambda: _waiting_on_locks(pipeline, 2), timeout=30, interval=0.05)

    rejections = await wait_archived(pipeline, tenant, len(commands) - 5, REJECTED, timeout=60)
    assert_one_outcome_each(commands, await verdicts_by_approval(pipeline, tenant), rejections)


async def test_two_groups_deciding_the_same_commands_give_one_verdict(
    pipeline: Pipeline, second_group: Process
) -> None:
    """Deciding twice, concurrently, from two workers, over fifty approvals."""
    tenant = pipeline.new_tenant()
    ids = [await request_approval(pipeline, tenant) for _ in range(50)]
    await eventually(lambda: _count_pending(pipeline, tenant, len(ids)), timeout=60, interval=0.2)
    commands = [command for approval_id in ids for command in competing(tenant, approval_id, 2)]
    before = await decisions_made(second_group)
    await pipeline.publisher.publish_many(commands)

    rejections = await wait_archived(pipeline, tenant, len(ids), REJECTED, timeout=60)
    assert_one_outcome_each(commands, await verdicts_by_approval(pipeline, tenant), rejections)
    await eventually(
        lambda: _decided_at_least(second_group, before + len(commands)), timeout=60, interval=0.5
    )


async def decisions_made(process: Process) -> float:
    """``ledgerbus_approvals_decisions_total`` summed over outcomes, from a worker's /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{process.metrics_port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ledgerbus_approvals_decisions_total{")
    )


async def _decided_at_least(process: Process, count: float) -> bool:
    return await decisions_made(process) >= count


async def _waiting_on_locks(pipeline: Pipeline, sessions: int) -> bool:
    """At least ``sessions`` connections to the pipeline's database wait for a lock."""
    waiting = await pipeline.pool.fetchval(
        "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE NOT l.granted AND a.datname = current_database()"
    )
    return bool(waiting >= sessions)


async def _count_pending(pipeline: Pipeline, tenant: str, count: int) -> bool:
    return len(await list_approvals(pipeline.pool, tenant, "pending", limit=1000)) == count


async def test_rebuild_reproduces_the_rows(pipeline: Pipeline) -> None:
    """Runs last in the module: every earlier test's approvals are in the tables."""
    await eventually(lambda: _projection_caught_up(pipeline), timeout=30, interval=0.2)
    before = await _snapshot(pipeline)
    assert {row["status"] for row in before["approvals"]} == {
        "pending",
        "approved",
        "denied",
        "expired",
    }
    assert before["approval_rejections"]

    result = await run_cli(["projections", "rebuild", "approvals"], pipeline.env)
    assert result.returncode == 0, result.stderr
    assert "rebuilt approvals" in result.stdout
    assert await _snapshot(pipeline) == before


async def _projection_caught_up(pipeline: Pipeline) -> bool:
    behind = await pipeline.pool.fetchval(
        """
        SELECT count(*) FROM chain_heads h LEFT JOIN projection_checkpoints c
          ON c.tenant_id = h.tenant_id AND c.projection = 'approvals'
        WHERE h.position > coalesce(c.position, 0)
        """
    )
    return bool(behind == 0)


async def _snapshot(pipeline: Pipeline) -> dict[str, list[dict[str, object]]]:
    return {
        table: [
            dict(row) for row in await pipeline.pool.fetch(f"SELECT * FROM {table} ORDER BY {key}")
        ]
        for table, key in (
            ("approvals", "tenant_id, approval_id"),
            ("approval_rejections", "tenant_id, event_id"),
        )
    }
