"""``ledgerbus db migrate`` for production databases."""

from __future__ import annotations

import asyncpg

from tests.conftest import Isolation
from tests.support.cli import run_cli


async def test_migrate_applies_once_then_reports_up_to_date(isolation: Isolation) -> None:
    env = {"LEDGERBUS_DATABASE_URL": isolation.database_url}
    first = await run_cli(["db", "migrate"], env)
    assert first.returncode == 0, first.stderr
    assert "applied 0002_events" in first.stdout
    second = await run_cli(["db", "migrate"], env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "0 migration(s) applied; database is up to date"
    conn = await asyncpg.connect(isolation.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
    finally:
        await conn.close()


async def test_migrate_against_unreachable_database_is_a_clear_error(isolation: Isolation) -> None:
    env = {"LEDGERBUS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = await run_cli(["db", "migrate"], env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
