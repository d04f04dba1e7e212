"""``ledgerbus streams``: one worker of the stream processors (run as many as you like).

The worker runs every processor in ``streams.registry`` and the projection
runner. Readiness is ``/metrics``: it is served once faust has its partitions
assigned, as the archiver does. SIGTERM or SIGINT stops faust cleanly (it
commits what was handled and leaves the group).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import click
from prometheus_client import start_http_server
from pydantic import ValidationError

from ledgerbus.bus import catalog_for
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.database import migrated_pool
from ledgerbus.commands.service import check_metrics_port, metrics_options
from ledgerbus.discovery import resolve_endpoints
from ledgerbus.embedded.ports import free_port
from producers.topics import ensure_topics
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from streams import registry
from streams.app import StreamsConfig
from streams.context import StreamsContext
from streams.webhooks.settings import WebhookSettingsError
from streams.worker import build_worker

log = logging.getLogger("ledgerbus.streams")


@click.command()
@metrics_options
@click.option(
    "--group",
    default=None,
    help="Faust app id and consumer group [default: <topic prefix>ledgerbus-streams].",
)
@click.option(
    "--session-timeout",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Seconds before the group gives a silent worker's partitions to another "
    "[default: LEDGERBUS_SESSION_TIMEOUT, 6].",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="After SIGTERM, exit anyway if the graceful stop has not finished by then.",
)
@clear_errors(asyncpg.PostgresError, OSError, ValidationError, WebhookSettingsError)
def streams(
    metrics_port: int,
    metrics_host: str,
    group: str | None,
    session_timeout: float | None,
    stop_timeout: float,
) -> None:
    """Run the stream processors (budgets, approvals, webhooks) until SIGTERM/SIGINT."""
    config = settings()
    check_metrics_port(metrics_port, metrics_host)
    processors = registry.processors()  # reads LEDGERBUS_<AREA>_* settings: fail early
    for chatty in ("faust", "mode"):  # a line per service start/stop at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    endpoints = resolve_endpoints(config)
    if not endpoints.schema_registry_url:
        raise click.ClickException(
            "no schema registry: set LEDGERBUS_SCHEMA_REGISTRY_URL or start `ledgerbus dev`"
        )
    streams_config = StreamsConfig(
        endpoints.kafka_bootstrap,
        config.topic_prefix,
        group,
        session_timeout_seconds=session_timeout or config.session_timeout,
        web_port=free_port(),
        data_dir=config.data_dir,
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def prepare() -> None:
        await ensure_topics(endpoints.kafka_bootstrap, config.topic_prefix)
        async with migrated_pool(endpoints.database_url, 1):
            pass

    loop.run_until_complete(prepare())
    catalog = catalog_for(config)
    registry_client = RegistryClient(endpoints.schema_registry_url)
    context = StreamsContext(
        database_url=endpoints.database_url,
        bootstrap=endpoints.kafka_bootstrap,
        catalog=catalog,
        deserializer=EventDeserializer(catalog, registry_client),
        serializer=EventSerializer(catalog, registry_client, config.topic_prefix),
        group=streams_config.app_id,
    )

    def ready() -> None:
        server, _ = start_http_server(metrics_port, addr=metrics_host)
        log.info(
            "streams worker ready (group %s); metrics on http://%s:%d/metrics",
            streams_config.app_id,
            metrics_host,
            server.server_port,
        )

    worker = build_worker(
        streams_config,
        context,
        processors,
        registry.projections(),
        on_ready=ready,
        loop=loop,
        stop_timeout=stop_timeout,
    )
    worker.execute_from_commandline()
