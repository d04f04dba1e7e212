"""``verify_chain`` over a 1M-event chain vs a raw asyncpg cursor reading the same rows.

The chain (one tenant, ~300 B bodies) is generated in Python and COPied in.
Baseline in the same run: a server-side cursor over the same columns in the
same kind of transaction, fetching the same batches, doing nothing per row.
Aim: verification at >= 0.7x the baseline's rows/s. Prints figures; asserts
only that the chain verifies. ``.venv/bin/pytest tests/bench/test_bench_verify.py -s``.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from event_store.audit import verify_chain
from event_store.chain import GENESIS
from event_store.migrate import migrate
from tests.conftest import Isolation

N = 1_000_000
CHUNK = 100_000
BODY = 300
TENANT = "bench"
COLUMNS = (
    *("tenant_id", "position", "event_id", "type", "subject", "time", "schema_id", "body"),
    *("prev_hash", "hash"),
)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def chunks() -> Iterator[list[tuple[Any, ...]]]:
    """The chain's rows, ``CHUNK`` at a time, hashed as ``EventStore.append`` would."""
    prev = GENESIS
    noise = os.urandom(BODY + 4096)
    for start in range(1, N + 1, CHUNK):
        rows = []
        for position in range(start, min(start + CHUNK, N + 1)):
            offset = position % 4096
            body = position.to_bytes(8, "big") + noise[offset : offset + BODY - 8]
            digest = hashlib.sha256(prev + body).digest()
            rows.append(
                (
                    TENANT,
                    position,
                    uuid.UUID(int=position),
                    "agent.heartbeat",
                    f"run-{position % 97}",
                    EPOCH + timedelta(milliseconds=position),
                    1,
                    body,
                    prev,
                    digest,
                )
            )
            prev = digest
        yield rows


async def build_chain(pool: asyncpg.Pool) -> bytes:
    head = GENESIS
    async with pool.acquire() as conn:
        for rows in chunks():
            await conn.copy_records_to_table("events", records=rows, columns=COLUMNS)
            head = rows[-1][-1]
        await conn.execute(
            "INSERT INTO chain_heads (tenant_id, position, hash) VALUES ($1, $2, $3)",
            TENANT,
            N,
            head,
        )
        await conn.execute("VACUUM ANALYZE events")
    return head


async def raw_cursor(pool: asyncpg.Pool, fetch_size: int = 20_000) -> int:
    """The baseline: the rows ``verify_chain`` reads, read and dropped."""
    rows_read = 0
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(
            "SELECT position, prev_hash, hash, body, type = 'audit.checkpoint', schema_id "
            "FROM events WHERE tenant_id = $1 ORDER BY position",
            TENANT,
        )
        while rows := await cursor.fetch(fetch_size):
            rows_read += len(rows)
    return rows_read


async def test_verify_vs_raw_cursor(isolation: Isolation) -> None:
    pool = await asyncpg.create_pool(isolation.database_url, min_size=1, max_size=2)
    try:
        await migrate(pool)
        began = time.perf_counter()
        head = await build_chain(pool)
        print(f"\nsetup: {N:,} events COPied in {time.perf_counter() - began:.1f} s")

        assert await raw_cursor(pool) == N  # warms the buffer cache for both runs
        timings: dict[str, list[float]] = {"raw cursor": [], "verify_chain": []}
        for _ in range(2):
            began = time.perf_counter()
            assert await raw_cursor(pool) == N
            timings["raw cursor"].append(time.perf_counter() - began)
            began = time.perf_counter()
            result = await verify_chain(pool, TENANT)
            timings["verify_chain"].append(time.perf_counter() - began)
            assert result.ok, result.failure
            assert (result.length, result.head) == (N, head)

        rates = {name: N / min(seconds) for name, seconds in timings.items()}
        for name, rate in rates.items():
            print(f"{name:>13}: {rate:>10,.0f} rows/s (best of 2)")
        print(f"        ratio: {rates['verify_chain'] / rates['raw cursor']:.2f}x (aim >= 0.7x)")
    finally:
        await pool.close()
