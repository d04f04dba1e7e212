"""Two budget workers, one SIGKILLed mid-stream and restarted: the budgets end exactly right.

Exactly right means: every run decided once (one decision event id per run),
no project ever promised more than its budget, spend is the sum of the distinct
costs, reservations are what the accepted runs still hold, every threshold the
spend reached was announced (once: one id each), and a rebuild from the
archive gives the same rows.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.models import Envelope
from streams.budgets import crossed, holding
from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.budgets import (
    ALERTS,
    budget,
    cost,
    dump_tables,
    header,
    of_tenant,
    run_request,
    topic_records,
    wait_decisions,
    wait_projected,
)
from tests.support.cli import run_cli
from tests.support.pipeline import Pipeline, open_pipeline

PROJECTS = [f"proj-{p}" for p in range(10)]
RUNS = 30  # per project
ESTIMATE = 10_000
AMOUNT = 10 * ESTIMATE
COSTED = 20  # runs per project that report a cost
COST = 4_500  # 20 x 4,500 = 90 % of the budget
CHUNK = 25


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(
        stack,
        registry_url,
        tmp_path_factory.mktemp("budgets-kill"),
        workers=2,
        extra_env={"LEDGERBUS_BUDGET_DEFAULT_POLICY": "reject"},
    ) as running:
        yield running


def stream(tenant: str) -> tuple[list[Envelope[Any]], list[Envelope[Any]]]:
    """Run requests with the costs of earlier runs mixed in, and every seventh
    cost again (same event) later on; also returns the distinct costs."""
    events, costs = [], []
    for n in range(RUNS):
        for project in PROJECTS:
            events.append(run_request(tenant, project, f"{project}-run-{n}", ESTIMATE))
            if 3 <= n < COSTED + 3:
                costs.append(cost(tenant, project, f"{project}-run-{n - 3}", COST))
                events.append(costs[-1])
        if n % 5 == 4:
            events += costs[-35::7]  # duplicates
    return events, costs


async def set_budgets(pipeline: Pipeline, tenant: str) -> None:
    await pipeline.publisher.publish_many([budget(tenant, p, AMOUNT) for p in PROJECTS])

    async def all_set() -> bool:
        count = await pipeline.pool.fetchval(
            "SELECT count(*) FROM budgets WHERE tenant_id = $1 AND amount_micros = $2",
            tenant,
            AMOUNT,
        )
        return bool(count == len(PROJECTS))

    await eventually(all_set, timeout=30, interval=0.1)


@pytest.mark.slow
async def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    await set_budgets(pipeline, tenant)
    events, costs = stream(tenant)
    chunks = [events[i : i + CHUNK] for i in range(0, len(events), CHUNK)]
    victim = pipeline.processes[1]
    replacement = None
    for n, chunk in enumerate(chunks):
        if n == len(chunks) // 3:
            victim.kill()
        if n == 2 * len(chunks) // 3:
            replacement = pipeline.start("streams")
        await pipeline.publisher.publish_many(chunk)
        await asyncio.sleep(0.4)
    assert victim.popen.returncode == -9
    assert replacement is not None
    await replacement.wait_ready()

    decided = await wait_decisions(pipeline, tenant, len(PROJECTS) * RUNS, timeout=120)
    # One decision per run: redeliveries re-emitted the same event, never a new one.
    assert all(len({d.id for d in decisions}) == 1 for decisions in decided.values())
    # and every re-emission was byte for byte the first one (same time, same outcome).
    values: dict[bytes | None, set[bytes]] = defaultdict(set)
    for record in of_tenant(await topic_records(pipeline, "agent-runs"), tenant):
        values[header(record, "ce_id")].add(record.value)
    assert len(values) == len(PROJECTS) * RUNS
    assert all(len(emitted) == 1 for emitted in values.values())
    outcome = {run: decisions[0] for run, decisions in decided.items()}

    consumed: dict[str, int] = defaultdict(int)
    for c in costs:
        consumed[c.data.run_id] += c.data.cost_micros
    for project in PROJECTS:
        mine = [d for d in outcome.values() if d.data.project_id == project]
        accepted = [d for d in mine if d.type == "agent.run_accepted"]
        assert sum(d.data.reserved_micros for d in accepted) <= AMOUNT, project
        assert all(d.data.reason == "budget_exceeded" for d in mine if d not in accepted)
        spent = sum(c.data.cost_micros for c in costs if c.data.project_id == project)
        reserved = sum(
            holding(
                accepted=True, closed=False, reserved=ESTIMATE, consumed=consumed[d.data.run_id]
            )
            for d in accepted
        )

        async def settled(
            project: str = project, spent: int = spent, reserved: int = reserved
        ) -> bool:
            row = await pipeline.pool.fetchrow(
                "SELECT b.reserved_micros, s.spent_micros FROM budgets b "
                "JOIN budget_spend s USING (tenant_id, project_id) "
                "WHERE tenant_id = $1 AND project_id = $2",
                tenant,
                project,
            )
            return row is not None and (row["spent_micros"], row["reserved_micros"]) == (
                spent,
                reserved,
            )

        await eventually(settled, timeout=30, interval=0.1)
        expected_alerts = len(crossed(spent, AMOUNT)) + (spent >= AMOUNT)

        async def announced(project: str = project, expected: int = expected_alerts) -> bool:
            alerts = await pipeline.archived(tenant, *ALERTS)
            return len([a for a in alerts if a.data.project_id == project]) == expected

        await eventually(announced, timeout=30, interval=0.1)

    alerts = await pipeline.archived(tenant, *ALERTS)
    thresholds = sorted((a.data.project_id, a.data.threshold_percent) for a in alerts)
    assert thresholds == sorted((p, t) for p in PROJECTS for t in crossed(COSTED * COST, AMOUNT))

    await wait_projected(pipeline, tenant)
    before = await dump_tables(pipeline)
    rebuilt = await run_cli(["projections", "rebuild", "budgets"], pipeline.env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert await dump_tables(pipeline) == before


async def test_the_default_policy_can_reject_runs_without_a_budget(pipeline: Pipeline) -> None:
    tenant = pipeline.new_tenant()
    await pipeline.publisher.publish(run_request(tenant, "unbudgeted", "r1", 0))
    decision = (await wait_decisions(pipeline, tenant, 1))["r1"][0]
    assert decision.type == "agent.run_rejected"
    assert decision.data.reason == "budget_exceeded"
    assert "no budget is set for project unbudgeted" in decision.data.detail
