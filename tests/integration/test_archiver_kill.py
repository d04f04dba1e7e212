"""Guarantee 1 against SIGKILL: an archiver killed at random moments and restarted
stores each event exactly once, at gap-free positions, in valid chains."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from pathlib import Path

import asyncpg
import pytest

from event_store.store import EventStore
from producers.publisher import Publisher
from tests.conftest import Isolation
from tests.support.archive import (
    archived_offsets,
    archiver_process,
    assert_archived_once,
    committed_offsets,
    eventually,
    ids_by_tenant,
    mixed_events,
    wait_archived,
)

pytestmark = pytest.mark.slow
EVENTS = 3000
KILLS = 3


def start_archiver(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Small batches, so a kill lands mid-stream."""
    return archiver_process(env, log, "--batch-size", "100")


async def test_sigkilled_archiver_restarted_archives_each_event_once(
    isolation: Isolation,
    publisher: Publisher,
    event_store: EventStore,
    db_pool: asyncpg.Pool,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    tenants = [f"{isolation.tenant_id}-{n}" for n in range(3)]
    events = mixed_events(tenants, EVENTS)
    await publisher.publish_many(events)
    env = {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}
    log = tmp_path / "archiver.log"
    seed = random.randrange(2**32)
    rng = random.Random(seed)

    bootstrap = cli_env["LEDGERBUS_KAFKA_BOOTSTRAP"]
    group = f"{isolation.topic_prefix}ledgerbus-archiver"  # the command's default

    async def archived() -> int:
        return int(await db_pool.fetchval("SELECT count(*) FROM events"))

    redelivered = 0
    for kill in range(KILLS):
        # Somewhere in the next slice of the stream: at once when a batch's
        # rows appear (its offsets are being committed right then), or a few
        # random ms later.
        target = rng.randint(kill * EVENTS // (KILLS + 1) + 1, (kill + 1) * EVENTS // (KILLS + 1))
        process = start_archiver(env, log)

        async def reached(target: int = target) -> bool:
            return await archived() >= target

        await eventually(reached, interval=0.002)
        await asyncio.sleep(rng.choice([0, rng.uniform(0, 0.05)]))
        process.kill()
        await asyncio.to_thread(process.wait)
        stored = await archived_offsets(db_pool)
        committed = await committed_offsets(bootstrap, group, isolation.topic_prefix)
        assert all(offset <= stored.get(tp, 0) for tp, offset in committed.items()), (
            "an offset was committed before its events were archived"
        )
        ahead = sum(offset - committed.get(tp, 0) for tp, offset in stored.items())
        redelivered += ahead
        print(f"seed {seed}: kill {kill + 1} at {await archived()} archived, {ahead} to redeliver")
    print(f"seed {seed}: {redelivered} archived events redelivered after kills")

    final = start_archiver(env, log)
    try:
        await wait_archived(db_pool, EVENTS, timeout=45)
    finally:
        final.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(final.wait, 20) == 0
    await assert_archived_once(event_store, ids_by_tenant(events))
    assert "drained" in log.read_text()
