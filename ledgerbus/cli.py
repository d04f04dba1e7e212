"""The ``ledgerbus`` command line.

Each command reads settings, turns configuration mistakes into a one-line error
and a non-zero exit code, and hands real work to the module that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from ledgerbus.commands.agent import agent
from ledgerbus.commands.archiver import archiver
from ledgerbus.commands.audit import audit
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.db import db
from ledgerbus.commands.demo import demo
from ledgerbus.commands.keys import keys
from ledgerbus.commands.llm_stub import llm_stub
from ledgerbus.commands.projections import projections
from ledgerbus.commands.replay import replay
from ledgerbus.commands.streams import streams
from ledgerbus.commands.webhooks import webhooks


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """ledgerbus: event-sourced message bus for AI agent workforces."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # one line per assignment


@main.command()
@click.option(
    "--with-agents",
    is_flag=True,
    help="Also run the built-in agents (tenant default); no LLM configured = a local stub.",
)
@clear_errors()
def dev(with_agents: bool) -> None:
    """Start the whole system on the embedded stack, in the foreground."""
    from ledgerbus.dev import run_dev

    sys.exit(asyncio.run(run_dev(settings(), with_agents=with_agents)))


def _read_data(value: str) -> dict[str, Any]:
    """``--data`` is JSON, or ``@path`` to a JSON file."""
    source = "--data"
    if value.startswith("@"):
        source = value[1:]
        try:
            value = Path(source).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {source}: {exc.strerror}") from None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{source} must be a JSON object")
    return data


@main.command()
@click.argument("event_type")
@click.option("--subject", required=True, help="Aggregate id; the Kafka key (order per subject).")
@click.option("--data", "data_arg", required=True, help="Payload as JSON, or @file.json.")
@click.option("--tenant", default="default", show_default=True, help="Tenant id.")
@click.option("--source", default="cli", show_default=True, help="Producer name.")
@click.option("--correlation-id", default=None, help="Id shared by one end-to-end flow.")
@clear_errors()
def publish(
    event_type: str,
    subject: str,
    data_arg: str,
    tenant: str,
    source: str,
    correlation_id: str | None,
) -> None:
    """Publish one event; prints its topic, partition and offset."""
    from ledgerbus.bus import catalog_for, connect, publishing
    from producers.publisher import build_event

    config = settings()
    data = _read_data(data_arg)
    # Validate before touching the network: bad input publishes nothing.
    event = build_event(
        catalog_for(config).get(event_type),
        subject=subject,
        tenant_id=tenant,
        data=data,
        source=source,
        correlation_id=correlation_id,
    )

    async def run() -> None:
        async with connect(config) as bus, publishing(bus, source) as publisher:
            delivery = await publisher.publish(event)
        click.echo(
            json.dumps(
                {
                    "event_id": str(delivery.event_id),
                    "type": delivery.type,
                    "topic": delivery.topic,
                    "partition": delivery.partition,
                    "offset": delivery.offset,
                }
            )
        )

    asyncio.run(run())


@main.command()
@click.option(
    "--types", "types", multiple=True, help="Event type glob, e.g. 'agent.*' (repeatable)."
)
@click.option("--subject", default=None, help="Only events about this subject.")
@click.option("--tenant", default=None, help="Only this tenant's events.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained event.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Exit after N events.")
@clear_errors()
def tail(
    types: tuple[str, ...],
    subject: str | None,
    tenant: str | None,
    from_beginning: bool,
    limit: int | None,
) -> None:
    """Print events as they arrive, one JSON object per line."""
    from consumers.follow import EventFilter, follow
    from ledgerbus.bus import connect

    config = settings()
    event_filter = EventFilter(types=types, subject=subject, tenant_id=tenant)

    async def run() -> None:
        async with connect(config) as bus:
            seen = 0
            events = follow(
                bus.endpoints.kafka_bootstrap,
                bus.topics(),
                bus.deserializer(),
                event_filter,
                from_beginning=from_beginning,
            )
            async for event in events:
                click.echo(event.model_dump_json())
                seen += 1
                if limit is not None and seen >= limit:
                    break

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@main.group()
def schemas() -> None:
    """Event schemas and the schema registry."""


@schemas.command("check")
@click.option("--register", is_flag=True, help="Register new and compatible schemas afterwards.")
@clear_errors()
def schemas_check(register: bool) -> None:
    """Check local .avsc files against every registered version; exit 1 if one breaks."""
    from ledgerbus.bus import connect
    from schemas.check import check_catalog
    from schemas.serde import subject_name

    config = settings()

    async def run() -> int:
        async with connect(config) as bus:
            results = await check_catalog(bus.registry, bus.catalog)
            for result in results:
                versions = ", ".join(f"v{v}" for v in result.versions) or "none registered"
                click.echo(f"{result.status:<13} {result.event_type:<34} ({versions})")
                for reason in result.reasons:
                    click.echo(f"    {reason}")
            broken = [r for r in results if r.status == "incompatible"]
            if broken:
                click.echo(f"{len(broken)} incompatible schema change(s)", err=True)
                return 1
            if register:
                for event_type in bus.catalog:
                    await bus.registry.register(subject_name(event_type), event_type.schema)
                click.echo(f"registered {len(results)} schemas")
            return 0

    sys.exit(asyncio.run(run()))


@main.command()
@clear_errors()
def gateway() -> None:
    """Serve the HTTP API (uses LEDGERBUS_* endpoints or a running `ledgerbus dev`)."""
    from ledgerbus.gateway_process import serve

    asyncio.run(serve(settings()))


# Subcommands that live in their own modules, one per area:
main.add_command(db)
main.add_command(archiver)
main.add_command(projections)
main.add_command(replay)
main.add_command(audit)
main.add_command(streams)
main.add_command(webhooks)
main.add_command(keys)
main.add_command(agent)
main.add_command(llm_stub)
main.add_command(demo)
