"""Migrations on real PostgreSQL: in order, once, atomically, and safe when processes race."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from event_store.migrate import load, migrate
from tests.conftest import Isolation


async def test_concurrent_runners_apply_each_migration_exactly_once(isolation: Isolation) -> None:
    runners = [await asyncpg.connect(isolation.database_url) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in runners))
        names = [migration.name for migration in load()]
        assert sorted(results, key=len) == [[]] * 5 + [names]
        assert await migrate(runners[0]) == []
        recorded = await runners[0].fetch("SELECT version, name FROM schema_migrations")
        assert [(row["version"], row["name"]) for row in recorded] == [
            (migration.version, migration.name) for migration in load()
        ]
    finally:
        for conn in runners:
            await conn.close()


async def test_applies_in_version_order_and_a_failed_migration_leaves_no_trace(
    isolation: Isolation, tmp_path: Path
) -> None:
    (tmp_path / "0002_add_note.sql").write_text("ALTER TABLE item ADD COLUMN note text;")
    (tmp_path / "0001_create_item.sql").write_text("CREATE TABLE item (id int);")
    (tmp_path / "0003_broken.sql").write_text("CREATE TABLE half_done (id int); SELECT 1 / 0;")
    conn = await asyncpg.connect(isolation.database_url)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, tmp_path)
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in versions] == [1, 2]
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None

        (tmp_path / "0003_broken.sql").write_text("CREATE TABLE half_done (id int);")
        assert await migrate(conn, tmp_path) == ["0003_broken"]
        assert await migrate(conn, tmp_path) == []
    finally:
        await conn.close()
