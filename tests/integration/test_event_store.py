"""The event store against real PostgreSQL: chaining, dedup, concurrency, reads."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from event_store.chain import GENESIS, link
from event_store.store import EventQuery, EventStore, StoredEvent, glob_to_like
from tests.support.events import new_event


async def history(
    store: EventStore, tenant: str, query: EventQuery | None = None
) -> list[StoredEvent]:
    return [event async for event in store.read(tenant, query or EventQuery(), page_size=7)]


def assert_chain(events: list[StoredEvent]) -> None:
    prev = GENESIS
    for expected_position, event in enumerate(events, start=1):
        assert event.position == expected_position
        assert event.prev_hash == prev
        assert event.hash == link(prev, event.body)
        prev = event.hash


async def test_append_assigns_positions_and_chains(event_store: EventStore) -> None:
    batch = [new_event("acme", n) for n in range(25)]
    result = await event_store.append(batch)
    assert (result.appended, result.duplicates) == (25, 0)
    stored = await history(event_store, "acme")
    assert [e.event_id for e in stored] == [e.event_id for e in batch]
    assert [e.body for e in stored] == [e.body for e in batch]
    assert_chain(stored)
    head = await event_store.head("acme")
    assert (head.position, head.hash) == (25, stored[-1].hash)


async def test_redelivered_events_are_not_stored_or_chained_twice(event_store: EventStore) -> None:
    first = [new_event("acme", n) for n in range(10)]
    await event_store.append(first)
    again = [*first[5:], *[new_event("acme", n) for n in range(10, 15)], first[0], first[0]]
    result = await event_store.append(again)
    assert (result.appended, result.duplicates) == (5, 7)
    stored = await history(event_store, "acme")
    assert len(stored) == 15
    assert len({e.event_id for e in stored}) == 15
    assert_chain(stored)
    assert (await event_store.append(first)).appended == 0


async def test_concurrent_appenders_never_fork_the_chain(event_store: EventStore) -> None:
    events = [new_event("acme", n) for n in range(400)]
    # Eight appenders with overlapping batches, as after a rebalance.
    batches = [events[i : i + 60] for i in range(0, 400, 40)]
    await asyncio.gather(*(event_store.append(b) for b in batches))
    stored = await history(event_store, "acme")
    assert len(stored) == 400
    assert {e.event_id for e in stored} == {e.event_id for e in events}
    assert_chain(stored)


async def test_tenants_have_separate_chains(event_store: EventStore) -> None:
    mixed = [new_event("acme" if n % 3 else "globex", n) for n in range(30)]
    await asyncio.gather(
        event_store.append(mixed[:15]), event_store.append(list(reversed(mixed[15:])))
    )
    acme, globex = await history(event_store, "acme"), await history(event_store, "globex")
    assert len(acme) == 20 and len(globex) == 10
    assert {e.tenant_id for e in acme} == {"acme"}
    assert_chain(acme)
    assert_chain(globex)
    assert await event_store.tenants() == ["acme", "globex"]


async def test_reads_filter_and_never_cross_tenants(event_store: EventStore) -> None:
    events = [
        new_event("acme", n, type="agent.started" if n % 2 else "approval.requested")
        for n in range(20)
    ]
    events[3] = replace(events[3], correlation_id="flow-1")
    events[8] = replace(events[8], correlation_id="flow-1")
    others = [replace(e, event_id=new_event("globex").event_id, tenant_id="globex") for e in events]
    await event_store.append(events + others)

    async def ids(query: EventQuery, tenant: str = "acme") -> list[int]:
        return [e.position for e in await history(event_store, tenant, query)]

    assert await ids(EventQuery(from_position=5, to_position=9)) == [5, 6, 7, 8, 9]
    assert await ids(EventQuery(types=["agent.*"])) == list(range(2, 21, 2))
    assert await ids(EventQuery(types=["approval.requested", "nope.*"])) == list(range(1, 21, 2))
    assert await ids(EventQuery(subject="run-3")) == [4, 11, 18]
    assert await ids(EventQuery(correlation_id="flow-1")) == [4, 9]
    window = EventQuery(since=events[2].time, until=events[6].time)
    assert await ids(window) == [3, 4, 5, 6]
    # Whatever the filters, another tenant's rows never come back.
    for query in (EventQuery(), EventQuery(types=["*"]), EventQuery(subject="run-3")):
        assert {e.tenant_id for e in await history(event_store, "acme", query)} == {"acme"}
    assert await ids(EventQuery(), tenant="initech") == []


@pytest.mark.parametrize(
    ("glob", "like"),
    [("agent.*", "agent.%"), ("a?c", "a_c"), ("100%_x", "100\\%\\_x"), ("*", "%")],
)
def test_glob_to_like(glob: str, like: str) -> None:
    assert glob_to_like(glob) == like


async def test_head_of_empty_tenant_is_genesis(event_store: EventStore) -> None:
    head = await event_store.head("nobody")
    assert (head.position, head.hash) == (0, GENESIS)
