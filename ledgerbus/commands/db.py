"""``ledgerbus db``: the event store's database."""

from __future__ import annotations

import asyncio

import asyncpg
import click

from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.discovery import resolve_database_url


@click.group()
def db() -> None:
    """The PostgreSQL event store."""


@db.command("migrate")
@clear_errors(asyncpg.PostgresError, OSError)
def db_migrate() -> None:
    """Apply pending SQL migrations (dev and every ledgerbus process do this at start)."""
    from event_store.migrate import migrate

    async def run() -> list[str]:
        conn = await asyncpg.connect(resolve_database_url(settings()))
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    for name in applied:
        click.echo(f"applied {name}")
    click.echo(f"{len(applied)} migration(s) applied; database is up to date")
