"""The budget processor in a running pipeline (SPEC Guarantee 9, issue 5 section 1).

One pipeline (archiver + one streams worker) serves the module; every test
works in its own tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from producers.publisher import InvalidEvent
from schemas.models import Envelope
from schemas.topics import physical_name
from streams.budgets import BudgetView, budget_status
from tests.conftest import StackUnderTest
from tests.support.approvals import wait_archived
from tests.support.archive import eventually
from tests.support.budgets import (
    ALERTS,
    DECISIONS,
    budget,
    cost,
    dump_tables,
    header,
    of_tenant,
    run_ended,
    run_request,
    set_budget,
    topic_records,
    wait_decisions,
    wait_projected,
)
from tests.support.cli import run_cli
from tests.support.pipeline import Pipeline, open_pipeline

ESTIMATE = 1_000


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(stack, registry_url, tmp_path_factory.mktemp("budgets")) as running:
        yield running


def new_runs(count: int) -> list[str]:
    return [f"run-{uuid.uuid4().hex[:10]}" for _ in range(count)]


async def status_now(
    pipeline: Pipeline, tenant: str, project: str, at: datetime | None = None
) -> BudgetView:
    async with pipeline.pool.acquire() as conn:
        return await budget_status(conn, tenant, project, at or datetime.now(UTC))


async def wait_status(
    pipeline: Pipeline, tenant: str, project: str, **expected: object
) -> BudgetView:
    """The project's view once the given fields have the given values."""
    seen: list[BudgetView] = []

    async def reached() -> bool:
        seen[:] = [await status_now(pipeline, tenant, project)]
        return all(getattr(seen[0], name) == value for name, value in expected.items())

    try:
        await eventually(reached, 30, interval=0.05)
    except TimeoutError:
        raise AssertionError(f"expected {expected}, last seen {seen}") from None
    return seen[0]


async def decide(pipeline: Pipeline, tenant: str, project: str, run_id: str, estimate: int) -> str:
    """Request a run and wait for its decision; returns its type."""
    request = run_request(tenant, project, run_id, estimate)
    await pipeline.publisher.publish(request)
    found: list[str] = []

    async def decided() -> bool:
        found[:] = [
            d.type
            for d in await pipeline.archived(tenant, *DECISIONS)
            if d.causation_id == str(request.id)
        ]
        return bool(found)

    await eventually(decided, 30, interval=0.05)
    return found[0]


def alert_keys(alerts: list[Envelope[Any]]) -> list[tuple[object, ...]]:
    """(type, period start, amount, threshold) of each alert, sorted."""
    return sorted(
        (
            a.type,
            a.data.period_start,
            a.data.amount_micros,
            getattr(a.data, "threshold_percent", None),
        )
        for a in alerts
    )


async def test_200_concurrent_requests_accept_exactly_what_fits(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    await set_budget(pipeline, tenant, "proj", 10 * ESTIMATE, period="monthly")
    runs = new_runs(200)
    await pipeline.publisher.publish_many(
        [run_request(tenant, "proj", run, ESTIMATE) for run in runs]
    )

    decided = await wait_decisions(pipeline, tenant, len(runs))
    assert sorted(decided) == sorted(runs)
    assert all(len(decisions) == 1 for decisions in decided.values())
    outcomes = [decisions[0] for decisions in decided.values()]
    accepted = [d for d in outcomes if d.type == "agent.run_accepted"]
    rejected = [d for d in outcomes if d.type == "agent.run_rejected"]
    assert len(accepted) == 10
    assert {d.data.reserved_micros for d in accepted} == {ESTIMATE}
    assert len(rejected) == 190
    assert {d.data.reason for d in rejected} == {"budget_exceeded"}
    assert all(f"budget {10 * ESTIMATE} micro-USD" in d.data.detail for d in rejected)
    # Each decision went to Kafka once: nothing was decided twice.
    assert len(of_tenant(await topic_records(pipeline, "agent-runs"), tenant)) == 200

    view = await status_now(pipeline, tenant, "proj")
    assert (view.amount_micros, view.spent_micros, view.reserved_micros) == (10_000, 0, 10_000)
    assert (view.remaining_micros, view.status, view.period) == (0, "ok", "monthly")


async def test_thresholds_fire_once_each_and_duplicate_costs_count_once(
    pipeline: Pipeline,
) -> None:
    tenant = pipeline.new_tenant()
    await set_budget(pipeline, tenant, "proj", 1_000)
    costs = [cost(tenant, "proj", f"run-{n}", micros) for n, micros in enumerate([500, 300, 100])]
    costs += [cost(tenant, "proj", "run-3", 100), cost(tenant, "proj", "run-4", 50)]
    await pipeline.publisher.publish_many(costs + costs)  # every cost event twice

    alerts = await wait_archived(pipeline, tenant, 5, *ALERTS)
    await wait_status(pipeline, tenant, "proj", spent_micros=1_050, status="exceeded")
    await wait_projected(pipeline, tenant)
    alerts = await pipeline.archived(tenant, *ALERTS)
    assert alert_keys(alerts) == [
        ("budget.threshold_crossed", None, 1_000, 50),
        ("budget.threshold_crossed", None, 1_000, 80),
        ("budget.threshold_crossed", None, 1_000, 90),
        ("budget.threshold_crossed", None, 1_000, 100),
        ("project.budget_exceeded", None, 1_000, None),
    ]
    crossing = {a.data.threshold_percent: a.data for a in alerts if a.type == ALERTS[0]}
    assert crossing[100].status == "exceeded"
    assert crossing[80].spent_micros >= 800
    marks = await pipeline.pool.fetchval(
        "SELECT count(*) FROM budget_thresholds WHERE tenant_id = $1", tenant
    )
    assert marks == 4
    view = await status_now(pipeline, tenant, "proj")
    assert (view.remaining_micros, view.period_start) == (0, None)


async def test_a_new_period_or_a_raised_budget_re_arms_the_thresholds(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    berlin = {"period": "monthly", "timezone": "Europe/Berlin"}
    await set_budget(pipeline, tenant, "proj", 1_000, **berlin)
    january = datetime(2026, 1, 15, 12, tzinfo=UTC)
    february = datetime(2026, 2, 15, 12, tzinfo=UTC)
    jan_start, feb_start = (
        datetime(2025, 12, 31, 23, tzinfo=UTC),
        datetime(2026, 1, 31, 23, tzinfo=UTC),
    )
    await pipeline.publisher.publish_many(
        [
            cost(tenant, "proj", "run-1", 600, time=january),
            cost(tenant, "proj", "run-2", 500, time=january),
            cost(tenant, "proj", "run-3", 600, time=february),
        ]
    )
    await wait_archived(pipeline, tenant, 6, *ALERTS)

    # A run is judged against the period of its own time.
    late_january = run_request(tenant, "proj", "run-jan", 100, time=january)
    late_february = run_request(tenant, "proj", "run-feb", 100, time=february)
    await pipeline.publisher.publish_many([late_january, late_february])
    decided = await wait_decisions(pipeline, tenant, 2)
    assert decided["run-jan"][0].type == "agent.run_rejected"
    assert "spent 1100" in decided["run-jan"][0].data.detail
    assert decided["run-feb"][0].type == "agent.run_accepted"

    await set_budget(pipeline, tenant, "proj", 2_000, **berlin)
    await pipeline.publisher.publish(cost(tenant, "proj", "run-4", 400, time=february))
    await wait_archived(pipeline, tenant, 7, *ALERTS)
    assert alert_keys(await pipeline.archived(tenant, *ALERTS)) == [
        ("budget.threshold_crossed", jan_start, 1_000, 50),
        ("budget.threshold_crossed", jan_start, 1_000, 80),
        ("budget.threshold_crossed", jan_start, 1_000, 90),
        ("budget.threshold_crossed", jan_start, 1_000, 100),
        ("budget.threshold_crossed", feb_start, 1_000, 50),
        ("budget.threshold_crossed", feb_start, 2_000, 50),
        ("project.budget_exceeded", jan_start, 1_000, None),
    ]
    view = await status_now(pipeline, tenant, "proj", at=february)
    assert (view.period_start, view.spent_micros, view.reserved_micros) == (feb_start, 1_000, 100)
    assert (view.remaining_micros, view.status) == (900, "ok")


async def test_costs_move_reservations_to_spend_and_endings_release_the_rest(
    pipeline: Pipeline,
) -> None:
    tenant = pipeline.new_tenant()
    await set_budget(pipeline, tenant, "proj", 10_000)
    assert await decide(pipeline, tenant, "proj", "r1", 4_000) == "agent.run_accepted"
    assert await decide(pipeline, tenant, "proj", "r2", 4_000) == "agent.run_accepted"
    assert await decide(pipeline, tenant, "proj", "r3", 4_000) == "agent.run_rejected"

    await pipeline.publisher.publish(cost(tenant, "proj", "r1", 1_500))
    await wait_status(pipeline, tenant, "proj", spent_micros=1_500, reserved_micros=6_500)
    await pipeline.publisher.publish(run_ended(tenant, "proj", "r1"))
    await wait_status(pipeline, tenant, "proj", reserved_micros=4_000)
    await pipeline.publisher.publish(run_ended(tenant, "proj", "r2", failed=True))
    await wait_status(pipeline, tenant, "proj", reserved_micros=0, remaining_micros=8_500)

    assert await decide(pipeline, tenant, "proj", "r4", 8_500) == "agent.run_accepted"
    # A run that costs more than its estimate holds nothing more, and spend counts in full.
    await pipeline.publisher.publish(cost(tenant, "proj", "r4", 9_000))
    view = await wait_status(pipeline, tenant, "proj", spent_micros=10_500, reserved_micros=0)
    assert (view.status, view.remaining_micros) == ("exceeded", 0)
    # Guarantee 9: once spend has reached the budget even a free run is refused.
    assert await decide(pipeline, tenant, "proj", "r5", 0) == "agent.run_rejected"


async def test_a_cost_or_an_ending_before_the_acceptance_counts_the_same(
    pipeline: Pipeline,
) -> None:
    tenant = pipeline.new_tenant()
    await set_budget(pipeline, tenant, "proj", 1_000)
    await pipeline.publisher.publish(cost(tenant, "proj", "early", 100))
    await wait_status(pipeline, tenant, "proj", spent_micros=100)
    assert await decide(pipeline, tenant, "proj", "early", 500) == "agent.run_accepted"
    await wait_status(pipeline, tenant, "proj", reserved_micros=400)

    await pipeline.publisher.publish(run_ended(tenant, "proj", "done"))
    await wait_projected(pipeline, tenant)
    assert await decide(pipeline, tenant, "proj", "done", 300) == "agent.run_accepted"
    view = await wait_status(pipeline, tenant, "proj", reserved_micros=400)
    assert view.remaining_micros == 500


async def test_a_redelivered_request_gets_the_same_decision(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    await set_budget(pipeline, tenant, "proj", 1_000)
    request = run_request(tenant, "proj", "twice", 600)
    await pipeline.publisher.publish(request)
    first = (await wait_decisions(pipeline, tenant, 1))["twice"]
    # The same request again, and another one for the same run: both answered
    # with the first decision (same event), and nothing more is reserved.
    await pipeline.publisher.publish(request)
    await pipeline.publisher.publish(run_request(tenant, "proj", "twice", 600))
    await eventually(lambda: _decision_records(pipeline, tenant, 3), timeout=30, interval=0.1)
    records = of_tenant(await topic_records(pipeline, "agent-runs"), tenant)
    assert {header(record, "ce_id") for record in records} == {str(first[0].id).encode()}
    assert await pipeline.archived(tenant, *DECISIONS) == first
    view = await status_now(pipeline, tenant, "proj")
    assert view.reserved_micros == 600


async def _decision_records(pipeline: Pipeline, tenant: str, count: int) -> bool:
    return len(of_tenant(await topic_records(pipeline, "agent-runs"), tenant)) >= count


async def test_tenants_never_share_a_project(pipeline: Pipeline) -> None:
    spender, other = pipeline.new_tenant(), pipeline.new_tenant()
    await set_budget(pipeline, spender, "proj", 1_000)
    await pipeline.publisher.publish(cost(spender, "proj", "r1", 1_000))
    await wait_archived(pipeline, spender, 5, *ALERTS)

    # No budget in the other tenant: the default policy accepts.
    assert await decide(pipeline, other, "proj", "r1", 500) == "agent.run_accepted"
    assert await decide(pipeline, spender, "proj", "r2", 1) == "agent.run_rejected"
    view = await status_now(pipeline, other, "proj")
    assert (view.amount_micros, view.spent_micros, view.reserved_micros) == (None, 0, 500)
    assert (view.status, view.remaining_micros) == ("no_budget", None)
    assert await pipeline.archived(other, *ALERTS) == []
    assert (await status_now(pipeline, spender, "proj")).reserved_micros == 0


async def test_bad_input_changes_nothing(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    with pytest.raises(InvalidEvent, match="cost_estimate_micros"):
        run_request(tenant, "proj", "r1", -1)
    with pytest.raises(InvalidEvent, match="amount_micros"):
        budget(tenant, "proj", -5)
    with pytest.raises(InvalidEvent, match="cost_micros"):
        cost(tenant, "proj", "r1", -5)

    await set_budget(pipeline, tenant, "proj", 1_000)
    # Valid Avro, but no period or timezone to compute with. Dated later than the
    # good budget that follows: had they been applied, that one would lose.
    later = datetime.now(UTC) + timedelta(days=1)
    bad_budgets = [
        budget(tenant, "proj", 5_000, period="monthly", timezone="Mars/Olympus_Mons", time=later),
        budget(tenant, "proj", 5_000, period="unknown", time=later),
    ]
    await pipeline.publisher.publish_many(bad_budgets)
    await set_budget(pipeline, tenant, "proj", 2_000)
    assert (await status_now(pipeline, tenant, "proj")).period is None

    # Text PostgreSQL cannot store, a cost that would overflow the sums: dead-lettered
    # by the processor, skipped by the projection runner (which does not stall).
    poisoned = [cost(tenant, "pr\x00oj", "r1", 700), cost(tenant, "proj", "r1", 2**63 - 1)]
    garbage = b"\x00\x00\x00\x00\x07not avro"
    await pipeline.publisher.publish_many(poisoned)
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.env["LEDGERBUS_KAFKA_BOOTSTRAP"])
    await producer.start()
    try:
        commands = physical_name("commands", pipeline.topic_prefix)
        await producer.send_and_wait(commands, garbage, key=b"r1")
    finally:
        await producer.stop()
    assert await decide(pipeline, tenant, "proj", "r1", 2_000) == "agent.run_accepted"
    await pipeline.publisher.publish(cost(tenant, "proj", "r1", 10))
    await wait_status(pipeline, tenant, "proj", spent_micros=10)
    await wait_projected(pipeline, tenant)

    def reasons(records: list[ConsumerRecord]) -> list[tuple[bytes | None, bytes | None]]:
        return sorted((header(r, "ce_id"), header(r, "ledgerbus-dlq-reason")) for r in records)

    dead_costs = of_tenant(await topic_records(pipeline, "costs", dead_letters=True), tenant)
    assert reasons(dead_costs) == sorted(
        [
            (str(poisoned[0].id).encode(), b"invalid_text"),
            (str(poisoned[1].id).encode(), b"too_large"),
        ]
    )
    dead_budgets = of_tenant(await topic_records(pipeline, "budgets", dead_letters=True), tenant)
    expected = (b"unknown_timezone", b"unknown_period")
    assert reasons(dead_budgets) == sorted(
        (str(bad.id).encode(), reason) for bad, reason in zip(bad_budgets, expected, strict=True)
    )
    dead_commands = await topic_records(pipeline, "commands", dead_letters=True)
    assert garbage in [record.value for record in dead_commands]
    rows = await pipeline.pool.fetch("SELECT project_id FROM budgets WHERE tenant_id = $1", tenant)
    assert [row["project_id"] for row in rows] == ["proj"]
    view = await status_now(pipeline, tenant, "proj")
    assert (view.amount_micros, view.spent_micros, view.reserved_micros) == (2_000, 10, 1_990)


async def test_rebuild_reproduces_every_row(pipeline: Pipeline) -> None:
    """A history with out-of-order arrivals, a period change and alerts, then
    ``ledgerbus projections rebuild budgets``: the same rows, byte for byte."""
    tenant = pipeline.new_tenant()
    now = datetime.now(UTC)
    await set_budget(pipeline, tenant, "p1", 5_000, time=now)
    # An older budget that arrives later loses.
    await pipeline.publisher.publish(budget(tenant, "p1", 9_000, time=now - timedelta(hours=1)))
    await pipeline.publisher.publish(cost(tenant, "p1", "r1", 1_000))
    await wait_status(pipeline, tenant, "p1", spent_micros=1_000)
    assert await decide(pipeline, tenant, "p1", "r1", 3_000) == "agent.run_accepted"
    await pipeline.publisher.publish(run_ended(tenant, "p1", "r2"))
    await wait_projected(pipeline, tenant)
    assert await decide(pipeline, tenant, "p1", "r2", 1_000) == "agent.run_accepted"
    assert await decide(pipeline, tenant, "p1", "r3", 3_000) == "agent.run_rejected"
    await pipeline.publisher.publish(cost(tenant, "p1", "r1", 2_500))
    await wait_status(
        pipeline, tenant, "p1", amount_micros=5_000, spent_micros=3_500, reserved_micros=0
    )

    await set_budget(pipeline, tenant, "p2", 1_000, period="monthly")
    await pipeline.publisher.publish_many(
        [
            cost(tenant, "p2", "r1", 400, time=datetime(2026, 1, 10, tzinfo=UTC)),
            cost(tenant, "p2", "r2", 700, time=datetime(2026, 2, 10, tzinfo=UTC)),
        ]
    )
    await wait_archived(pipeline, tenant, 2, *ALERTS)  # p1 at 70 %, p2 in February
    await set_budget(pipeline, tenant, "p2", 1_000, period="yearly")  # re-buckets the spend
    await pipeline.publisher.publish(
        cost(tenant, "p2", "r3", 1, time=datetime(2026, 3, 1, tzinfo=UTC))
    )
    await wait_archived(pipeline, tenant, 7, *ALERTS)
    year = datetime(2026, 1, 1, tzinfo=UTC)
    spend = await status_now(pipeline, tenant, "p2", at=datetime(2026, 6, 1, tzinfo=UTC))
    assert (spend.period_start, spend.spent_micros, spend.status) == (year, 1_101, "exceeded")

    for row in await pipeline.pool.fetch("SELECT tenant_id FROM chain_heads"):
        await wait_projected(pipeline, row["tenant_id"])
    before = await dump_tables(pipeline)
    assert any(row[0] == tenant for row in before["budget_runs"])
    rebuilt = await run_cli(["projections", "rebuild", "budgets"], pipeline.env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert await dump_tables(pipeline) == before
