"""The ``runs`` projection on real PostgreSQL: the same rows whatever the order
events are applied in, and however often (the archive interleaves topics, and
the runner re-applies a batch after a crash)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from event_store.projections import ProjectedEvent
from producers.publisher import build_event
from schemas.models import Envelope
from streams.runs import RunsProjection, RunStatus, get_run, list_runs
from tests.support.gateway_deployment import dump_projection
from tests.support.pipeline import CATALOG

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TENANT = "acme"


def event(
    type_: str, seconds: float, correlation: str | None = "c-1", **data: Any
) -> Envelope[Any]:
    built = build_event(
        CATALOG.get(type_),
        subject=str(data["run_id"]),
        tenant_id=TENANT,
        source="test",
        data=data,
        correlation_id=correlation,
    )
    return built.model_copy(update={"time": T0 + timedelta(seconds=seconds)})


RUN = {"run_id": "run-1", "project_id": "p", "agent_name": "developer"}


def cost(seconds: float, micros: int, run_id: str = "run-1") -> Envelope[Any]:
    llm: dict[str, Any] = {
        "provider": "openai",
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 1,
    }
    run = {**RUN, "run_id": run_id}
    return event("cost.recorded", seconds, **run, **llm, cost_micros=micros, latency_ms=5)


LIFE = [
    event(
        "agent.run_requested", 0, None, **RUN, task="t", risk_level="low", cost_estimate_micros=5
    ),
    event("agent.run_accepted", 1, **RUN, reserved_micros=5, parent_run_id="run-0"),
    event("agent.started", 2, **RUN, instance_id="a"),
    cost(3, 120),
    event("agent.started", 60, **RUN, instance_id="b"),  # resumed after an approval
    cost(61, 30),
    event("agent.completed", 62, **RUN, instance_id="b", duration_ms=62_000, result="ok"),
    event("agent.run_rejected", 0, **{**RUN, "run_id": "run-2"}, reason="budget_exceeded"),
    event("agent.failed", 5, **{**RUN, "run_id": "run-3"}, reason="timeout", error_message="slow"),
    cost(4, 7, run_id="run-3"),
]


@pytest.fixture
async def runs(db_pool: asyncpg.Pool) -> RunsProjection:
    projection = RunsProjection()
    await db_pool.execute(projection.ddl)
    return projection


async def fold(pool: asyncpg.Pool, projection: RunsProjection, events: list[Envelope[Any]]) -> None:
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE runs, run_costs")
        for position, envelope in enumerate(events, 1):
            async with conn.transaction():
                await projection.apply(conn, ProjectedEvent(position, envelope))


async def test_a_run_is_folded_from_its_events(db_pool: asyncpg.Pool, runs: RunsProjection) -> None:
    await fold(db_pool, runs, LIFE)
    run = await get_run(db_pool, TENANT, "run-1")
    assert run is not None
    assert run.status == RunStatus.COMPLETED
    assert (run.requested_at, run.accepted_at) == (T0, T0 + timedelta(seconds=1))
    assert run.started_at == T0 + timedelta(seconds=2), "the first start, not the resumption"
    assert run.finished_at == T0 + timedelta(seconds=62)
    assert (run.duration_ms, run.reason) == (62_000, None)
    assert (run.cost_micros, run.llm_calls) == (150, 2)
    assert (run.correlation_id, run.parent_run_id) == ("c-1", "run-0")
    rejected = await get_run(db_pool, TENANT, "run-2")
    failed = await get_run(db_pool, TENANT, "run-3")
    assert rejected is not None and failed is not None
    assert (rejected.status, rejected.reason) == (RunStatus.REJECTED, "budget_exceeded")
    assert (failed.status, failed.reason, failed.cost_micros) == (RunStatus.FAILED, "timeout", 7)
    assert [r.run_id for r in await list_runs(db_pool, TENANT, status=RunStatus.FAILED)] == [
        "run-3"
    ]
    assert [r.run_id for r in await list_runs(db_pool, TENANT, limit=2, after="run-1")] == [
        "run-2",
        "run-3",
    ]
    assert await list_runs(db_pool, "globex") == []


async def test_any_order_and_repeats_give_the_same_rows(
    db_pool: asyncpg.Pool, runs: RunsProjection
) -> None:
    await fold(db_pool, runs, LIFE)
    expected = await dump_projection(db_pool, runs)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for _ in range(8):
        shuffled = LIFE + rng.sample(LIFE, 4)  # some events applied twice
        rng.shuffle(shuffled)
        await fold(db_pool, runs, shuffled)
        assert await dump_projection(db_pool, runs) == expected, f"seed {seed}"


async def test_a_bad_page_size_is_refused(db_pool: asyncpg.Pool, runs: RunsProjection) -> None:
    with pytest.raises(ValueError, match="limit must be between 1 and 1000"):
        await list_runs(db_pool, TENANT, limit=0)
