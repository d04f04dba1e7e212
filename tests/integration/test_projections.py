"""Projections over real archived events: counts, checkpoints, rebuild, crashes."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from event_store.projection_counts import EventCounts
from event_store.projections import ProjectionRunner, UnknownProjection
from event_store.store import EventStore
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import DecodeError, EventDeserializer, EventSerializer
from tests.conftest import Isolation
from tests.integration.conftest import CATALOG
from tests.support.archive import eventually
from tests.support.archived import archive, sample_events
from tests.support.cli import run_cli
from tests.support.events import new_event

Counts = dict[tuple[str, str], tuple[int, int, int]]


@pytest.fixture
def serializer(registry: RegistryClient) -> EventSerializer:
    return EventSerializer(CATALOG, registry)


@pytest.fixture
async def runner(db_pool: asyncpg.Pool, registry: RegistryClient) -> ProjectionRunner:
    runner = ProjectionRunner(
        db_pool, [EventCounts()], EventDeserializer(CATALOG, registry), batch_size=7
    )
    await runner.install()
    return runner


@pytest.fixture
def env(cli_env: dict[str, str], isolation: Isolation) -> dict[str, str]:
    return {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}


def expected_counts(history: Sequence[Envelope[Any]]) -> Counts:
    """What ``event_counts`` must hold for ``history``, archived in this order."""
    positions: Counter[str] = Counter()
    counts: Counts = {}
    for event in history:
        positions[event.tenant_id] += 1
        key = (event.tenant_id, event.type)
        count, first, _ = counts.get(key, (0, positions[event.tenant_id], 0))
        counts[key] = (count + 1, first, positions[event.tenant_id])
    return counts


async def stored_counts(db: asyncpg.Pool | asyncpg.Connection) -> Counts:
    rows = await db.fetch("SELECT * FROM event_counts")
    return {
        (r["tenant_id"], r["type"]): (r["count"], r["first_position"], r["last_position"])
        for r in rows
    }


async def checkpoints(db: asyncpg.Pool | asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT tenant_id, position FROM projection_checkpoints")
    return {r["tenant_id"]: r["position"] for r in rows}


async def table_digest(db: asyncpg.Pool, table: str) -> str:
    """Every row's text form, in order, hashed: equal digests mean identical tables."""
    digest: str = await db.fetchval(
        f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {table} t"
    )
    return digest


async def catch_up(runner: ProjectionRunner) -> None:
    while (await runner.run_once())[0]:
        pass


def lag() -> float | None:
    return REGISTRY.get_sample_value(
        "ledgerbus_projection_lag_events", {"projection": "event_counts"}
    )


async def test_counts_per_tenant_and_type_with_checkpoints_at_the_heads(
    runner: ProjectionRunner, event_store: EventStore, serializer: EventSerializer
) -> None:
    history = [*sample_events("acme", 23), *sample_events("globex", 9)]
    await archive(event_store, serializer, history)
    await runner.run_once()  # one batch of 7 per tenant
    assert await checkpoints(runner.pool) == {"acme": 7, "globex": 7}
    assert lag() == 23 + 9 - 14
    await catch_up(runner)
    more = sample_events("acme", 12, start=23)
    await archive(event_store, serializer, more)
    await catch_up(runner)
    assert await stored_counts(runner.pool) == expected_counts([*history, *more])
    assert await checkpoints(runner.pool) == {"acme": 35, "globex": 9}
    assert lag() == 0


async def test_rebuild_reproduces_identical_tables(
    runner: ProjectionRunner, event_store: EventStore, serializer: EventSerializer
) -> None:
    for start in range(0, 40, 10):  # built incrementally, in rounds
        await archive(event_store, serializer, sample_events("acme", 10, start))
        await archive(event_store, serializer, sample_events("globex", 3, start))
        await catch_up(runner)
    before = await table_digest(runner.pool, "event_counts")
    rows_before = await runner.pool.fetch("SELECT * FROM event_counts ORDER BY 1, 2")
    assert await runner.rebuild("event_counts") == 52
    assert await table_digest(runner.pool, "event_counts") == before
    assert await runner.pool.fetch("SELECT * FROM event_counts ORDER BY 1, 2") == rows_before
    assert await checkpoints(runner.pool) == {"acme": 40, "globex": 12}
    assert (await runner.run_once()) == (0, 0)


async def test_checkpoints_are_per_tenant(
    runner: ProjectionRunner, event_store: EventStore, serializer: EventSerializer
) -> None:
    await archive(event_store, serializer, [*sample_events("acme", 5), *sample_events("b", 5)])
    await catch_up(runner)
    b_rows = [row for key, row in (await stored_counts(runner.pool)).items() if key[0] == "b"]
    await archive(event_store, serializer, sample_events("acme", 8, start=5))
    assert await runner.run_once() == (1, 0)  # only acme is behind
    assert await checkpoints(runner.pool) == {"acme": 12, "b": 5}
    after = await stored_counts(runner.pool)
    assert [row for key, row in after.items() if key[0] == "b"] == b_rows
    assert sum(count for (tenant, _), (count, _, _) in after.items() if tenant == "acme") == 12


async def test_an_undecodable_event_rolls_back_its_batch_and_spares_other_tenants(
    runner: ProjectionRunner, event_store: EventStore, serializer: EventSerializer
) -> None:
    await archive(event_store, serializer, [*sample_events("acme", 3), *sample_events("b", 3)])
    await event_store.append([replace(new_event("acme", 3), schema_id=987_654)])
    await archive(event_store, serializer, sample_events("acme", 2, start=4))
    assert await runner.run_once() == (1, 1)
    assert await checkpoints(runner.pool) == {"b": 3}  # acme's first batch left no trace
    assert await stored_counts(runner.pool) == expected_counts(sample_events("b", 3))
    before = await table_digest(runner.pool, "event_counts")
    with pytest.raises(DecodeError, match="schema id 987654 is unknown"):
        await runner.rebuild("event_counts")
    assert await table_digest(runner.pool, "event_counts") == before
    assert await checkpoints(runner.pool) == {"b": 3}


async def test_rebuild_while_the_runner_runs_loses_and_doubles_nothing(
    db_pool: asyncpg.Pool,
    registry: RegistryClient,
    event_store: EventStore,
    serializer: EventSerializer,
) -> None:
    deserializer = EventDeserializer(CATALOG, registry)
    running = ProjectionRunner(
        db_pool, [EventCounts()], deserializer, batch_size=5, poll_interval=0.01
    )
    await running.install()
    rebuilding = ProjectionRunner(db_pool, [EventCounts()], deserializer, batch_size=5)
    task = asyncio.create_task(running.run())
    history: list[Envelope[Any]] = []
    for start in range(0, 120, 20):
        batch = [*sample_events("acme", 20, start), *sample_events("b", 7, start)]
        history += batch
        await archive(event_store, serializer, batch)
        await rebuilding.rebuild("event_counts")  # while ``running`` applies the same events
    running.stop()
    await task
    await catch_up(running)
    assert await stored_counts(db_pool) == expected_counts(history)
    assert await checkpoints(db_pool) == {"acme": 120, "b": 42}


async def test_unknown_projection_names_the_known_ones(
    runner: ProjectionRunner, env: dict[str, str]
) -> None:
    with pytest.raises(UnknownProjection, match="'budget'; known: event_counts"):
        await runner.rebuild("budget")  # the runner knows only what it was given
    result = await run_cli(["projections", "rebuild", "budget"], env)
    assert result.returncode == 2
    assert "error: unknown projection 'budget'; known: " in result.stderr
    for name in ("approvals", "budgets", "event_counts", "webhook_subscriptions"):
        assert name in result.stderr


async def test_cli_rebuild_reports_progress_and_builds_the_tables(
    event_store: EventStore, serializer: EventSerializer, env: dict[str, str], db_pool: asyncpg.Pool
) -> None:
    history = [*sample_events("acme", 30), *sample_events("b", 4)]
    await archive(event_store, serializer, history)
    result = await run_cli(["projections", "rebuild"], env)
    assert result.returncode == 0, result.stderr
    assert "rebuilt event_counts: 34 events applied" in result.stdout
    assert "rebuild event_counts: 34 events" in result.stderr
    assert await stored_counts(db_pool) == expected_counts(history)


async def start_runner(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "ledgerbus", "projections", "run", "--batch-size", "40"),
            *("--poll-interval", "0.05"),
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
        )


def mid_batch(db: asyncpg.Connection) -> Callable[[], Awaitable[bool]]:
    """Whether some session holds uncommitted writes: a batch applied but not committed."""

    async def check() -> bool:
        sessions: int = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
        )
        return sessions > 0

    return check


CAUGHT_UP = 'ledgerbus_projection_lag_events{projection="event_counts"} 0.0'


@pytest.mark.slow
async def test_runner_killed_mid_batch_resumes_without_double_applying(
    event_store: EventStore,
    serializer: EventSerializer,
    env: dict[str, str],
    isolation: Isolation,
    tmp_path: Path,
) -> None:
    """Each round archives more events, starts ``ledgerbus projections run``
    and SIGKILLs it while a batch holds uncommitted writes (or a few ms later)."""
    log = tmp_path / "runner.log"
    history: list[Envelope[Any]] = []
    runners: list[asyncio.subprocess.Process] = []
    db = await asyncpg.connect(isolation.database_url)
    await db.execute(EventCounts.ddl)  # so the first write seen below is a batch's
    try:
        for round_ in range(4):
            tenants = ["acme", "globex", f"t-{uuid.uuid4().hex[:6]}"]
            batch = [e for t in tenants for e in sample_events(t, 400, start=400 * round_)]
            history += batch
            await archive(event_store, serializer, batch)
            proc = await start_runner(env, log)
            runners.append(proc)
            await eventually(mid_batch(db), interval=0.002)
            await asyncio.sleep(random.uniform(0, 0.01))
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            assert sum((await checkpoints(db)).values()) < len(history)  # killed before done

        proc = await start_runner(env, log)
        runners.append(proc)
        heads = Counter(event.tenant_id for event in history)

        async def caught_up() -> bool:
            return await checkpoints(db) == heads

        await eventually(caught_up, 60)
        assert await stored_counts(db) == expected_counts(history)
        port = re.findall(rb"metrics on http://127\.0\.0\.1:(\d+)", log.read_bytes())[-1]
        async with httpx.AsyncClient() as client:

            async def lag_is_zero() -> bool:
                response = await client.get(f"http://127.0.0.1:{int(port)}/metrics")
                return CAUGHT_UP in response.text

            await eventually(lag_is_zero, 10)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        for runner in runners:
            if runner.returncode is None:
                runner.kill()
                await runner.wait()
        await db.close()
