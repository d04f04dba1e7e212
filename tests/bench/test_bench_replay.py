"""Replay read: archived events streamed from PostgreSQL and decoded, vs raw asyncpg.

Baseline in the same run: asyncpg fetching the same rows with the same keyset
pages and nothing else. Then the event store's ``read`` alone, ``read`` plus
decoding into envelopes, plus NDJSON formatting, and ``ledgerbus replay
--format ndjson > /dev/null`` end to end (process start-up included). Prints
figures; asserts only counts. ``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg

from event_store.decoding import decode
from event_store.migrate import migrate
from event_store.store import EventStore
from ledgerbus.commands.replay import ndjson_line
from schemas.catalog import default_catalog
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from tests.conftest import Isolation, StackUnderTest
from tests.support.archived import archive, sample_events

N = 200_000
PAGE = 1000
TENANT = "bench"


async def raw_fetch(pool: asyncpg.Pool) -> int:
    """Keyset pages of the same columns ``EventStore.read`` selects; rows left as records."""
    count, position = 0, 0
    while True:
        rows = await pool.fetch(
            "SELECT tenant_id, position, event_id, type, subject, time, correlation_id, "
            "causation_id, schema_id, body, kafka_topic, kafka_partition, kafka_offset, "
            "prev_hash, hash FROM events WHERE tenant_id = $1 AND position > $2 "
            f"ORDER BY position LIMIT {PAGE}",
            TENANT,
            position,
        )
        count += len(rows)
        if len(rows) < PAGE:
            return count
        position = rows[-1]["position"]


async def store_read(store: EventStore) -> int:
    return sum([1 async for _ in store.read(TENANT, page_size=PAGE)])


async def store_read_decode(store: EventStore, deserializer: EventDeserializer) -> int:
    count = 0
    async for stored in store.read(TENANT, page_size=PAGE):
        await decode(deserializer, stored.schema_id, stored.body)
        count += 1
    return count


async def store_read_decode_ndjson(store: EventStore, deserializer: EventDeserializer) -> int:
    count = 0
    with open(os.devnull, "w") as out:  # noqa: ASYNC230 - /dev/null never blocks
        async for stored in store.read(TENANT, page_size=PAGE):
            event = await decode(deserializer, stored.schema_id, stored.body)
            out.write(ndjson_line(stored.position, event) + "\n")
            count += 1
    return count


async def timed(run: Callable[[], Awaitable[int]]) -> float:
    began = time.perf_counter()
    assert await run() == N
    return N / (time.perf_counter() - began)


async def test_replay_read_vs_raw_asyncpg(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient, registry_url: str
) -> None:
    pool = await asyncpg.create_pool(isolation.database_url, min_size=1, max_size=2)
    try:
        await migrate(pool)
        store = EventStore(pool)
        serializer = EventSerializer(default_catalog(), registry)
        for start in range(0, N, 20_000):
            await archive(store, serializer, sample_events(TENANT, 20_000, start))
        deserializer = EventDeserializer(default_catalog(), registry)
        await store_read_decode(store, deserializer)  # warm: schemas fetched, pages cached

        # As autovacuum would within a minute: with the statistics of an empty
        # table, PostgreSQL answers each keyset page by scanning and sorting every
        # row after the cursor (Bitmap Heap Scan + top-N sort), quadratic in N.
        await pool.execute("ANALYZE events")
        raw = await timed(lambda: raw_fetch(pool))
        read = await timed(lambda: store_read(store))
        decoded = await timed(lambda: store_read_decode(store, deserializer))
        ndjson = await timed(lambda: store_read_decode_ndjson(store, deserializer))

        env = {
            **os.environ,
            **stack.endpoints.as_env(),
            "LEDGERBUS_DATABASE_URL": isolation.database_url,
            "LEDGERBUS_SCHEMA_REGISTRY_URL": registry_url,
        }
        began = time.perf_counter()
        replay = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "ledgerbus", "replay", "--tenant", TENANT),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await replay.communicate()
        command = N / (time.perf_counter() - began)
        assert replay.returncode == 0, stderr.decode()
        assert f"{N:,} events" in stderr.decode()
    finally:
        await pool.close()

    print(f"\nreplay read of {N:,} archived events, {PAGE}-row keyset pages")
    print(f"  raw asyncpg fetch (baseline)       {raw:>10,.0f} events/s")
    print(f"  EventStore.read                    {read:>10,.0f} events/s  ({read / raw:.2f}x)")
    print(
        f"  read + decode to envelopes         {decoded:>10,.0f} events/s  ({decoded / raw:.2f}x)"
    )
    print(f"  read + decode + NDJSON (/dev/null) {ndjson:>10,.0f} events/s  ({ndjson / raw:.2f}x)")
    print(f"  `ledgerbus replay > /dev/null`     {command:>10,.0f} events/s  (incl. start-up)")
    print(f"  command's own figure: {stderr.decode().strip().splitlines()[-1]}")
