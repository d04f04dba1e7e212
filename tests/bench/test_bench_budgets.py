"""Budget processor throughput: run-request decisions/s and cost events/s through
one ``ledgerbus streams`` worker, against the same work as plain SQL.

Processor: N events published at once (``publish_many``), timed from the publish
call until the worker's ``ledgerbus_budget_events_total`` counter says it handled
them all (handled = decision committed and its event confirmed by Kafka); the
path is publisher -> source topic -> router -> per-project topic -> decider.
Baseline, same run, same database and tables: the test process itself runs one
plain SQL transaction per decision (lock the project row, read the spend, insert
the run, move the reservation) and per cost (dedup insert, spend upsert, run
upsert), on as many connections as the decider decides projects in parallel; no
Kafka, no events. Also prints one request's publish -> decided latency. Prints
figures; asserts only counts. ``make bench``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.budget_processor import PARALLEL_PROJECTS
from streams.budgets import LIFETIME, fits
from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.budgets import cost, run_request, set_budget
from tests.support.pipeline import Pipeline, open_pipeline

PROJECTS = 20
REQUESTS = 3_000
COSTS = 3_000
ESTIMATE = 1_000
#: Each project's budget fits half of its requests.
AMOUNT = REQUESTS // PROJECTS // 2 * ESTIMATE
COST = 10
LATENCY_SAMPLES = 20


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    log_dir = tmp_path_factory.mktemp("bench-budgets")
    async with open_pipeline(stack, registry_url, log_dir, workers=1) as running:
        yield running


async def handled(pipeline: Pipeline, event_type: str) -> int:
    """The worker's count of events of ``event_type`` its decider has handled."""
    port = pipeline.processes[1].metrics_port
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ledgerbus_budget_events_total" and sample.labels["type"] == event_type
    )


async def through_processor(
    pipeline: Pipeline, events: Sequence[object], event_type: str
) -> tuple[float, float]:
    """Seconds from publishing ``events`` until the decider has handled them all,
    and from its first handled one to its last (the steady rate, without the
    first event's latency)."""
    before = await handled(pipeline, event_type)
    began = time.perf_counter()
    await pipeline.publisher.publish_many(events)  # type: ignore[arg-type]
    first: list[float] = []

    async def done() -> bool:
        count = await handled(pipeline, event_type) - before
        if count and not first:
            first.append(time.perf_counter())
        return count >= len(events)

    await eventually(done, timeout=300, interval=0.02)
    ended = time.perf_counter()
    return ended - began, ended - first[0]


async def per_project(
    pool: asyncpg.Pool, projects: dict[str, list[str]], work: Callable[..., Awaitable[None]]
) -> float:
    """Seconds to run ``work(conn, project, item)`` for every item, projects spread
    over ``PARALLEL_PROJECTS`` connections, one transaction per item."""
    names = sorted(projects)

    async def lane(lane_projects: list[str]) -> None:
        async with pool.acquire() as conn:
            for project in lane_projects:
                for item in projects[project]:
                    async with conn.transaction():
                        await work(conn, project, item)

    began = time.perf_counter()
    await asyncio.gather(*(lane(names[n::PARALLEL_PROJECTS]) for n in range(PARALLEL_PROJECTS)))
    return time.perf_counter() - began


async def sql_decision(conn: asyncpg.Connection, tenant: str, project: str, run_id: str) -> None:
    budget = await conn.fetchrow(
        "SELECT amount_micros, reserved_micros FROM budgets "
        "WHERE tenant_id = $1 AND project_id = $2 FOR UPDATE",
        tenant,
        project,
    )
    spent = await conn.fetchval(
        "SELECT spent_micros FROM budget_spend "
        "WHERE tenant_id = $1 AND project_id = $2 AND period_start = $3",
        tenant,
        project,
        LIFETIME,
    )
    assert budget is not None
    accepted = fits(
        spent=spent or 0,
        reserved=budget["reserved_micros"],
        estimate=ESTIMATE,
        amount=budget["amount_micros"],
    )
    await conn.execute(
        "INSERT INTO budget_runs (tenant_id, project_id, run_id, decision, reserved_micros) "
        "VALUES ($1, $2, $3, $4, $5)",
        tenant,
        project,
        run_id,
        "accepted" if accepted else "rejected",
        ESTIMATE if accepted else 0,
    )
    if accepted:
        await conn.execute(
            "UPDATE budgets SET reserved_micros = reserved_micros + $3 "
            "WHERE tenant_id = $1 AND project_id = $2",
            tenant,
            project,
            ESTIMATE,
        )


async def sql_cost(conn: asyncpg.Connection, tenant: str, project: str, run_id: str) -> None:
    await conn.fetchrow(
        "SELECT reserved_micros FROM budgets WHERE tenant_id = $1 AND project_id = $2 FOR UPDATE",
        tenant,
        project,
    )
    await conn.execute(
        "INSERT INTO budget_costs (tenant_id, event_id, project_id, run_id, time, cost_micros) "
        "VALUES ($1, gen_random_uuid(), $2, $3, now(), $4)",
        tenant,
        project,
        run_id,
        COST,
    )
    await conn.execute(
        "INSERT INTO budget_spend AS s (tenant_id, project_id, period_start, spent_micros) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, project_id, period_start) "
        "DO UPDATE SET spent_micros = s.spent_micros + EXCLUDED.spent_micros",
        tenant,
        project,
        LIFETIME,
        COST,
    )
    await conn.execute(
        "UPDATE budget_runs SET consumed_micros = consumed_micros + $4 "
        "WHERE tenant_id = $1 AND project_id = $2 AND run_id = $3",
        tenant,
        project,
        run_id,
        COST,
    )


def runs_of(project: str, count: int) -> list[str]:
    return [f"{project}-run-{n}" for n in range(count)]


async def test_budget_processor_throughput(pipeline: Pipeline) -> None:
    tenant, baseline = pipeline.new_tenant(), pipeline.new_tenant()
    projects = {f"proj-{p}": runs_of(f"proj-{p}", REQUESTS // PROJECTS) for p in range(PROJECTS)}
    for project in projects:
        await set_budget(pipeline, tenant, project, AMOUNT)
    await pipeline.pool.executemany(
        "INSERT INTO budgets (tenant_id, project_id, amount_micros) VALUES ($1, $2, $3)",
        [(baseline, project, AMOUNT) for project in projects],
    )

    # Latency first, on an idle worker: one request at a time.
    latencies = []
    for n in range(LATENCY_SAMPLES):
        began = time.perf_counter()
        await pipeline.publisher.publish(run_request(tenant, "latency", f"lat-{n}", 0))

        async def decided(run_id: str = f"lat-{n}") -> bool:
            return bool(
                await pipeline.pool.fetchval(
                    "SELECT decision IS NOT NULL FROM budget_runs WHERE tenant_id = $1 "
                    "AND project_id = 'latency' AND run_id = $2",
                    tenant,
                    run_id,
                )
            )

        await eventually(decided, timeout=30, interval=0.002)
        latencies.append(time.perf_counter() - began)

    requests = [
        run_request(tenant, project, run, ESTIMATE)
        for n in range(REQUESTS // PROJECTS)
        for project, runs in projects.items()
        for run in runs[n : n + 1]
    ]
    costs = [cost(tenant, r.data.project_id, r.data.run_id, COST) for r in requests[:COSTS]]
    decide_seconds = await through_processor(pipeline, requests, "agent.run_requested")
    cost_seconds = await through_processor(pipeline, costs, "cost.recorded")

    async def decision(conn: asyncpg.Connection, project: str, run_id: str) -> None:
        await sql_decision(conn, baseline, project, run_id)

    async def spend(conn: asyncpg.Connection, project: str, run_id: str) -> None:
        await sql_cost(conn, baseline, project, run_id)

    sql_decide_seconds = await per_project(pipeline.pool, projects, decision)
    sql_cost_seconds = await per_project(pipeline.pool, projects, spend)

    for who in (tenant, baseline):
        rows = await pipeline.pool.fetch(
            "SELECT decision, count(*) FROM budget_runs WHERE tenant_id = $1 "
            "AND project_id LIKE 'proj-%' GROUP BY decision",
            who,
        )
        outcomes = {row["decision"]: row["count"] for row in rows}
        assert outcomes == {"accepted": REQUESTS // 2, "rejected": REQUESTS // 2}, who
        spent = await pipeline.pool.fetchval(
            "SELECT sum(spent_micros) FROM budget_spend WHERE tenant_id = $1", who
        )
        assert spent == COSTS * COST, who

    def line(what: str, count: int, ours: tuple[float, float], sql: float) -> str:
        total, steady = ours
        return (
            f"{what:<22} processor {count / total:>7,.0f}/s end to end,"
            f" {count / steady:>7,.0f}/s steady   plain SQL {count / sql:>7,.0f}/s"
            f"   plain SQL is {total / sql:.1f}x / {steady / sql:.1f}x faster"
        )

    print()
    print(f"budget processor, 1 worker, {PROJECTS} projects, {PARALLEL_PROJECTS} connections")
    print(line("run-request decisions", REQUESTS, decide_seconds, sql_decide_seconds))
    print(line("cost events", COSTS, cost_seconds, sql_cost_seconds))
    print(
        f"publish -> decided latency (idle worker): p50 {statistics.median(latencies) * 1000:.0f}"
        f" ms, max {max(latencies) * 1000:.0f} ms over {LATENCY_SAMPLES} requests"
    )
