"""The replay guard on real PostgreSQL: replays refused, redeliveries and other recipients not."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from consumers.replay_guard import ReplayGuard

AT = ("t.agent-messages", 2, 500)


@pytest.fixture
def guard(db_pool: asyncpg.Pool) -> ReplayGuard:
    return ReplayGuard(db_pool)


async def test_first_sighting_then_redelivery_then_replays(guard: ReplayGuard) -> None:
    assert await guard.first_sighting("acme", "qa", "m-1", AT)
    assert await guard.first_sighting("acme", "qa", "m-1", AT)  # redelivered after a crash
    for elsewhere in (("t.agent-messages", 2, 501), ("t.agent-messages", 3, 500), ("x", 2, 500)):
        assert not await guard.first_sighting("acme", "qa", "m-1", elsewhere)
    assert await guard.first_sighting("acme", "qa", "m-1", AT)  # still the first position


async def test_ids_are_kept_per_tenant_and_recipient(guard: ReplayGuard) -> None:
    assert await guard.first_sighting("acme", "qa", "m-1", AT)
    assert await guard.first_sighting("acme", "dev", "m-1", ("t.agent-messages", 0, 7))
    assert await guard.first_sighting("globex", "qa", "m-1", ("t.agent-messages", 0, 8))
    assert await guard.first_sighting("acme", "qa", "m-2", ("t.agent-messages", 0, 9))


async def test_concurrent_copies_let_exactly_one_through(db_pool: asyncpg.Pool) -> None:
    """Copies of one message handled at once by several processes (own guards, one table)."""
    guards = [ReplayGuard(db_pool) for _ in range(4)]
    answers = await asyncio.gather(
        *(
            guards[n % 4].first_sighting("acme", "qa", "m-1", ("t.agent-messages", 0, n))
            for n in range(24)
        )
    )
    assert answers.count(True) == 1
    first = answers.index(True)
    assert await guards[0].first_sighting("acme", "qa", "m-1", ("t.agent-messages", 0, first))


async def test_purge_forgets_only_old_ids(guard: ReplayGuard, db_pool: asyncpg.Pool) -> None:
    for n in range(3):
        assert await guard.first_sighting("acme", "qa", f"m-{n}", ("t.agent-messages", 0, n))
    await db_pool.execute(
        "UPDATE agent_messages_seen SET seen_at = now() - interval '11 minutes' "
        "WHERE message_id = 'm-0'"
    )
    assert await guard.purge(timedelta(minutes=10)) == 1
    assert await guard.purge(timedelta(minutes=10)) == 0
    remaining = await db_pool.fetch("SELECT message_id FROM agent_messages_seen ORDER BY 1")
    assert [row["message_id"] for row in remaining] == ["m-1", "m-2"]
    assert await guard.first_sighting("acme", "qa", "m-0", ("t.agent-messages", 9, 9))
    assert not await guard.first_sighting("acme", "qa", "m-1", ("t.agent-messages", 9, 9))


async def test_a_negative_age_is_refused_and_deletes_nothing(
    guard: ReplayGuard, db_pool: asyncpg.Pool
) -> None:
    assert await guard.first_sighting("acme", "qa", "m-1", AT)
    with pytest.raises(ValueError, match="must not be negative"):
        await guard.purge(timedelta(seconds=-1))
    assert await db_pool.fetchval("SELECT count(*) FROM agent_messages_seen") == 1
