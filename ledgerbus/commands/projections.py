"""``ledgerbus projections``: keep derived tables current, or rebuild them from the archive."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import click
from prometheus_client import start_http_server

from event_store.projections import Projection, ProjectionRunner, UnknownProjection
from ledgerbus.bus import connect
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.database import migrated_pool
from ledgerbus.commands.progress import Progress
from ledgerbus.commands.service import check_metrics_port, metrics_options, stop_on_signals
from schemas.serde import DecodeError
from streams import registry

log = logging.getLogger("ledgerbus.projections")


def known_projections() -> list[Projection]:
    """Every projection ledgerbus maintains."""
    return registry.projections()


def chosen(name: str | None) -> list[Projection]:
    """The projection called ``name``, or all of them when no name is given."""
    known = known_projections()
    if name is None:
        return known
    for projection in known:
        if projection.name == name:
            return [projection]
    raise UnknownProjection(name, [projection.name for projection in known])


@click.group()
def projections() -> None:
    """Tables derived from the event store (checkpointed, rebuildable)."""


@projections.command("rebuild")
@click.argument("name", required=False)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Positions read per query.",
)
@clear_errors(UnknownProjection, asyncpg.PostgresError, OSError, DecodeError)
def rebuild(name: str | None, batch_size: int) -> None:
    """Empty projection NAME (all if omitted) and replay the event store into it.

    Each projection is rebuilt in one transaction: a failure leaves the old
    tables in place, and readers of them wait until the new ones are complete.
    """
    selected = chosen(name)

    async def run() -> None:
        async with connect(settings()) as bus, migrated_pool(bus.endpoints.database_url) as pool:
            runner = ProjectionRunner(pool, selected, bus.deserializer(), batch_size=batch_size)
            for projection in selected:
                progress = Progress(f"rebuild {projection.name}")
                applied = await runner.rebuild(projection.name, progress.add)
                progress.done()
                click.echo(f"rebuilt {projection.name}: {applied} events applied")

    asyncio.run(run())


@projections.command("run")
@metrics_options
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Positions applied per transaction (at most that many events).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between looks for new events when caught up.",
)
@clear_errors(asyncpg.PostgresError, OSError)
def run_projections(
    metrics_port: int, metrics_host: str, batch_size: int, poll_interval: float
) -> None:
    """Apply new events to every projection until SIGTERM/SIGINT (finishes the batch in hand)."""
    config = settings()
    check_metrics_port(metrics_port, metrics_host)

    async def run() -> None:
        async with connect(config) as bus, migrated_pool(bus.endpoints.database_url) as pool:
            runner = ProjectionRunner(
                pool,
                known_projections(),
                bus.deserializer(),
                batch_size=batch_size,
                poll_interval=poll_interval,
            )
            await runner.install()
            stop_on_signals(runner.stop)
            server, _ = start_http_server(metrics_port, addr=metrics_host)
            log.info(
                "running projections %s; metrics on http://%s:%d/metrics",
                ", ".join(runner.projections),
                metrics_host,
                server.server_port,
            )
            try:
                await runner.run()
            finally:
                server.shutdown()
            log.info("stopped")

    asyncio.run(run())
