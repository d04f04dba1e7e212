"""``ledgerbus replay`` against real events in the store: order, every filter, formats, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from event_store.store import EventStore
from producers.publisher import Publisher
from schemas.models import Envelope
from tests.conftest import Isolation
from tests.support.archived import EPOCH, archive, sample_events
from tests.support.cli import run_cli

EVENTS = 30

Positioned = tuple[int, Envelope[Any]]


@pytest.fixture
def env(cli_env: dict[str, str], isolation: Isolation) -> dict[str, str]:
    return {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}


@pytest.fixture
async def history(
    publisher: Publisher, event_store: EventStore, isolation: Isolation
) -> list[Positioned]:
    """The test tenant's events as published and archived, by position; another
    tenant's events are interleaved in the store and must never show."""
    ours = sample_events(isolation.tenant_id, EVENTS)
    theirs = sample_events("someone-else", EVENTS)
    await publisher.publish_many(ours)
    for start in range(0, EVENTS, 10):
        await archive(event_store, publisher.serializer, ours[start : start + 10])
        await archive(event_store, publisher.serializer, theirs[start : start + 10])
    return list(enumerate(ours, start=1))


async def replayed(args: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    result = await run_cli(["replay", *args], env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_replay_prints_the_decoded_history_in_order(
    history: list[Positioned], env: dict[str, str], isolation: Isolation
) -> None:
    result = await run_cli(["replay", "--tenant", isolation.tenant_id], env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["position"] for line in lines] == list(range(1, EVENTS + 1))
    for line, (_, event) in zip(lines, history, strict=True):
        assert line["id"] == str(event.id)
        assert line["tenant_id"] == isolation.tenant_id
        assert (line["type"], line["subject"]) == (event.type, event.subject)
        assert line["correlation_id"] == event.correlation_id
        assert line["time"].endswith("Z")
        assert datetime.fromisoformat(line["time"]) == event.time
        assert line["data"] == event.data.model_dump(mode="json")  # bytes as base64
    assert f"replay {isolation.tenant_id}: {EVENTS} events" in result.stderr


FilterCase = tuple[list[str], Callable[[int, Envelope[Any]], bool]]

FILTERS: list[FilterCase] = [
    (["--from-position", "5", "--to-position", "12"], lambda p, e: 5 <= p <= 12),
    (["--types", "agent.*"], lambda p, e: e.type.startswith("agent.")),
    (
        ["--types", "workflow.started", "--types", "agent.heart*"],
        lambda p, e: e.type in ("workflow.started", "agent.heartbeat"),
    ),
    (["--types", "agent.?tarted"], lambda p, e: e.type == "agent.started"),
    (["--subject", "run-1"], lambda p, e: e.subject == "run-1"),
    (
        ["--since", "2026-01-01T00:10:00Z", "--until", "2026-01-01T01:20:00+01:00"],
        lambda p, e: 10 <= minutes(e) < 20,
    ),
    (["--since", "2026-01-01T00:25:00"], lambda p, e: minutes(e) >= 25),  # naive = UTC
    (["--until", "2026-01-01"], lambda p, e: False),
    (
        [
            "--types",
            "agent.*",
            "--subject",
            "run-0",
            "--from-position",
            "4",
            "--since",
            "2026-01-01",
        ],
        lambda p, e: e.type.startswith("agent.") and e.subject == "run-0" and p >= 4,
    ),
]


def minutes(event: Envelope[Any]) -> float:
    return (event.time - EPOCH).total_seconds() / 60


async def test_every_filter_selects_exactly_the_matching_events(
    history: list[Positioned], env: dict[str, str], isolation: Isolation
) -> None:
    tenant = ["--tenant", isolation.tenant_id]
    outputs = await asyncio.gather(*(replayed([*tenant, *args], env) for args, _ in FILTERS))
    for (args, matches), lines in zip(FILTERS, outputs, strict=True):
        expected = [(p, str(e.id)) for p, e in history if matches(p, e)]
        assert [(line["position"], line["id"]) for line in lines] == expected, args


async def test_table_format_aligns_columns(
    history: list[Positioned], env: dict[str, str], isolation: Isolation
) -> None:
    result = await run_cli(
        ["replay", "--tenant", isolation.tenant_id, "--format", "table", "--to-position", "6"], env
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["POSITION", "TIME", "(UTC)", "TYPE", "SUBJECT", "DATA"]
    assert len(rows) == 6
    type_at, subject_at, data_at = (header.index(c) for c in ("TYPE", "SUBJECT", "DATA"))
    for row, (position, event) in zip(rows, history, strict=False):
        assert row[:9].strip() == str(position)
        assert row[type_at:].startswith(event.type + " ")
        assert row[subject_at:].startswith(event.subject + " ")
        assert json.loads(row[data_at:]) == event.data.model_dump(mode="json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "'yesterday' is not a time (ISO 8601"),
        (["--until", "2026-13-01"], "is not a time (ISO 8601"),
        (["--since", "2026-01-02", "--until", "2026-01-01T23:00:00Z"], "--since must be before"),
        (["--since", "2026-01-02", "--until", "2026-01-02"], "--since must be before --until"),
        (["--from-position", "0"], "0 is not in the range x>=1"),
        (["--from-position", "9", "--to-position", "3"], "--to-position must not be before"),
        (["--format", "xml"], "'xml' is not one of 'ndjson', 'table'"),
    ],
)
async def test_bad_arguments_are_clear_errors(
    args: list[str], message: str, env: dict[str, str], isolation: Isolation
) -> None:
    result = await run_cli(["replay", "--tenant", isolation.tenant_id, *args], env)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


async def test_missing_tenant_is_a_usage_error(env: dict[str, str]) -> None:
    result = await run_cli(["replay"], env)
    assert result.returncode == 2
    assert "Missing option '--tenant'" in result.stderr


async def test_no_events_prints_nothing_and_says_why(
    history: list[Positioned], env: dict[str, str], isolation: Isolation
) -> None:
    unknown, unmatched = await asyncio.gather(
        run_cli(["replay", "--tenant", "nobody"], env),
        run_cli(["replay", "--tenant", isolation.tenant_id, "--types", "budget.*"], env),
    )
    assert (unknown.returncode, unknown.stdout) == (0, "")
    assert "tenant 'nobody' has no events" in unknown.stderr
    assert (unmatched.returncode, unmatched.stdout) == (0, "")
    assert (
        f"no events match; tenant '{isolation.tenant_id}' has {EVENTS} in all" in unmatched.stderr
    )
