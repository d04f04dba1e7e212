"""Versioned SQL migrations, applied in order, once, by whichever process gets there first.

Migrations are `NNNN_name.sql` files. Each one runs in its own transaction
together with its row in `schema_migrations`, so a migration is either applied
and recorded or neither. Several processes start at once (gateway, archiver,
workers), so every transaction first takes a transaction-level advisory lock:
the others wait, then see the version recorded and skip it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS = Path(__file__).with_name("migrations")

#: Arbitrary but fixed: the advisory lock every migrating process queues on.
LOCK_KEY = 0x6C6564676572  # "ledger"

_FILE_NAME = re.compile(r"(?P<version>\d{4})_[a-z0-9_]+\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


#: A plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


class MigrationError(RuntimeError):
    """The migrations directory holds something that is not a well-formed migration."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load(directory: Path = MIGRATIONS) -> list[Migration]:
    """Every migration in `directory`, in version order; stray or duplicate files are errors."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        migrations[version] = Migration(version, path.stem, path.read_text())
    return [migrations[version] for version in sorted(migrations)]


async def migrate(db: asyncpg.Connection | asyncpg.Pool, directory: Path = MIGRATIONS) -> list[str]:
    """Apply the migrations not applied yet; return the names of those this call applied."""
    applied: list[str] = []
    async with _connection(db) as conn:
        for migration in load(directory):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
                await conn.execute(_CREATE_TABLE)
                done = await conn.fetchval(
                    "SELECT true FROM schema_migrations WHERE version = $1", migration.version
                )
                if done:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration.name)
    return applied


@asynccontextmanager
async def _connection(
    db: asyncpg.Connection | asyncpg.Pool,
) -> AsyncIterator[Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db
