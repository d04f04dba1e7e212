"""``ledgerbus archiver``: the process that archives every event topic into PostgreSQL.

Readiness is the metrics endpoint: it is served only once the consumer has
started, so a supervisor (``ledgerbus dev``, Kubernetes) can probe
``/metrics`` the way it probes the gateway's ``/readyz``. SIGTERM or SIGINT
finishes and commits the batch in hand, leaves the group and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import click
from aiokafka import AIOKafkaProducer
from prometheus_client import start_http_server

from consumers.dead_letters import DeadLetters
from consumers.runtime import ConsumerConfig
from event_store.checkpoints import AuditKeyError, Signer, load_or_create_key
from event_store.store import EventStore
from ledgerbus.bus import connect, publishing
from ledgerbus.commands.audit import audit_key_path, key_option
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.database import migrated_pool
from ledgerbus.commands.service import check_metrics_port, metrics_options, stop_on_signals
from ledgerbus.settings import Settings
from producers.topics import ensure_topics
from streams.archiver import Archiver, archive_topics
from streams.checkpoints import Checkpointer

log = logging.getLogger("ledgerbus.archiver")

PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class ArchiverOptions:
    metrics_host: str
    metrics_port: int
    group: str | None
    batch_size: int
    key_path: Path
    checkpoint_every: int
    checkpoint_seconds: float


@click.command()
@metrics_options
@click.option(
    "--group", default=None, help="Consumer group id [default: <topic prefix>ledgerbus-archiver]."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Most records per poll; each poll is appended in one transaction.",
)
@key_option
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Sign a tenant's audit head after this many new events...",
)
@click.option(
    "--checkpoint-seconds",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="...or this long after its first unsigned event.",
)
@clear_errors(asyncpg.PostgresError, OSError, AuditKeyError)
def archiver(
    metrics_port: int,
    metrics_host: str,
    group: str | None,
    batch_size: int,
    key_path: Path | None,
    checkpoint_every: int,
    checkpoint_seconds: float,
) -> None:
    """Archive every event topic into the event store until SIGTERM/SIGINT, then drain.

    Also signs each tenant's chain head periodically (``audit.checkpoint`` events).
    """
    config = settings()
    check_metrics_port(metrics_port, metrics_host)
    options = ArchiverOptions(
        metrics_host,
        metrics_port,
        group,
        batch_size,
        audit_key_path(key_path),
        checkpoint_every,
        checkpoint_seconds,
    )
    asyncio.run(run(config, options))


async def run(config: Settings, options: ArchiverOptions) -> None:
    prefix = config.topic_prefix
    group = options.group or f"{prefix}ledgerbus-archiver"
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(connect(config))
        bootstrap = bus.endpoints.kafka_bootstrap
        await ensure_topics(bootstrap, prefix)
        pool = await stack.enter_async_context(migrated_pool(bus.endpoints.database_url, 2))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        stack.push_async_callback(producer.stop)

        store = EventStore(pool)
        publisher = await stack.enter_async_context(publishing(bus, "audit"))
        checkpointer = Checkpointer(
            store,
            publisher,
            Signer(load_or_create_key(options.key_path)),
            every_events=options.checkpoint_every,
            every_seconds=options.checkpoint_seconds,
        )
        consumer_config = ConsumerConfig(
            bootstrap,
            group,
            archive_topics(prefix),
            max_poll_records=options.batch_size,
            session_timeout_ms=round(config.session_timeout * 1000),
        )
        archiver = Archiver(
            consumer_config,
            bus.deserializer(),
            store,
            DeadLetters(producer, group),
            on_appended=checkpointer.after_append,
        )
        stop_on_signals(archiver.request_stop)
        await archiver.start()
        stack.push_async_callback(archiver.stop)

        server, _ = start_http_server(options.metrics_port, addr=options.metrics_host)
        stack.callback(server.shutdown)
        log.info(
            "archiving %d topics as group %s; metrics on http://%s:%d/metrics",
            len(consumer_config.topics),
            group,
            options.metrics_host,
            server.server_port,
        )
        background = [
            asyncio.create_task(_report_progress(archiver)),
            asyncio.create_task(checkpointer.run()),
        ]
        try:
            await archiver.run()
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info(
            "drained: last batch appended and committed; %d events archived, %d duplicates "
            "skipped; leaving group %s",
            archiver.archived,
            archiver.duplicates,
            group,
        )


async def _report_progress(archiver: Archiver) -> None:
    """A line on stderr every few seconds while events arrive."""
    reported = -1
    while True:
        await asyncio.sleep(PROGRESS_SECONDS)
        if archiver.archived != reported:
            reported = archiver.archived
            log.info("%d events archived, %d duplicates skipped", reported, archiver.duplicates)
