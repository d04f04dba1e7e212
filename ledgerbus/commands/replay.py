"""``ledgerbus replay``: a tenant's archived history, decoded, in position order.

History streams page by page from the event store, so any length replays in
constant memory; a count and a rate go to stderr while it runs.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
import click

from event_store.decoding import decode
from event_store.store import EventQuery, EventStore
from ledgerbus.bus import connect
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.database import migrated_pool
from ledgerbus.commands.progress import Progress
from schemas.models import Envelope
from schemas.serde import DecodeError

TIME_FORMAT = "ISO 8601, e.g. 2026-01-31T09:00:00Z or 2026-01-31; no offset means UTC"


class UtcTime(click.ParamType):
    """An ISO 8601 time; one without an offset is taken as UTC, like every time in ledgerbus."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not a time ({TIME_FORMAT})", param, ctx)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def ndjson_line(position: int, event: Envelope[Any]) -> str:
    """The envelope as ``ledgerbus tail`` prints it, with ``position`` first."""
    return f'{{"position":{position},{event.model_dump_json()[1:]}'


class Table:
    """Fixed-width columns, so rows line up without reading the whole history first."""

    def __init__(self, type_width: int) -> None:
        self.row = f"{{:>9}}  {{:<27}}  {{:<{type_width}}}  {{:<24}}  {{}}"

    def header(self) -> str:
        return self.row.format("POSITION", "TIME (UTC)", "TYPE", "SUBJECT", "DATA")

    def line(self, position: int, event: Envelope[Any]) -> str:
        time = event.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return self.row.format(
            position, time, event.type, event.subject, event.data.model_dump_json()
        )


@click.command()
@click.option("--tenant", required=True, help="Whose history.")
@click.option(
    "--from-position",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="First position.",
)
@click.option("--to-position", type=click.IntRange(min=1), default=None, help="Last position.")
@click.option("--types", multiple=True, help="Event type glob, e.g. 'agent.*' (repeatable).")
@click.option("--subject", default=None, help="Only events about this subject.")
@click.option("--since", type=UtcTime(), default=None, help=f"Events at or after ({TIME_FORMAT}).")
@click.option("--until", type=UtcTime(), default=None, help="Events strictly before (same format).")
@click.option(
    "--format",
    "output",
    type=click.Choice(["ndjson", "table"]),
    default="ndjson",
    show_default=True,
    help="One JSON object per line, or aligned columns.",
)
@clear_errors(asyncpg.PostgresError, OSError, DecodeError)
def replay(
    tenant: str,
    from_position: int,
    to_position: int | None,
    types: tuple[str, ...],
    subject: str | None,
    since: datetime | None,
    until: datetime | None,
    output: str,
) -> None:
    """Print a tenant's archived events in order, decoded.

    NDJSON lines are what `ledgerbus tail` prints (the event envelope, bytes
    as base64, times in UTC) with the event's position added first.
    """
    if to_position is not None and to_position < from_position:
        raise click.UsageError("--to-position must not be before --from-position")
    if since is not None and until is not None and since >= until:
        raise click.UsageError("--since must be before --until")
    query = EventQuery(
        from_position=from_position,
        to_position=to_position,
        subject=subject,
        types=types,
        since=since,
        until=until,
    )
    try:
        asyncio.run(_replay(tenant, query, output))
    except BrokenPipeError:
        # The reader left (`| head`): stop quietly, as cat does, and keep Python's
        # exit-time flush from failing again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


async def _replay(tenant: str, query: EventQuery, output: str) -> None:
    out = sys.stdout
    async with connect(settings()) as bus, migrated_pool(bus.endpoints.database_url, 2) as pool:
        store = EventStore(pool)
        deserializer = bus.deserializer()
        table = Table(max(len(event_type.name) for event_type in bus.catalog))
        line = table.line if output == "table" else ndjson_line
        progress = Progress(f"replay {tenant}")
        async for stored in store.read(tenant, query):
            event = await decode(deserializer, stored.schema_id, stored.body)
            if output == "table" and not progress.count:
                out.write(table.header() + "\n")
            out.write(line(stored.position, event) + "\n")
            progress.add()
        out.flush()
        progress.done()
        if not progress.count:
            head = await store.head(tenant)
            if head.position == 0:
                click.echo(f"tenant {tenant!r} has no events", err=True)
            else:
                click.echo(
                    f"no events match; tenant {tenant!r} has {head.position} in all", err=True
                )
