"""``ledgerbus webhooks``: register endpoints, list them, redeliver failed deliveries.

Creating publishes ``webhook.subscribed`` (the stream processors pick it up);
the signing secret is printed once and only appears again in that event.
Redelivery starts a new round of attempts for failed or dead deliveries,
under the same delivery id, so the receiver sees the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import click

from ledgerbus.bus import catalog_for, connect, publishing
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.database import migrated_pool
from ledgerbus.discovery import resolve_endpoints
from streams.webhooks import manage
from streams.webhooks.settings import WebhookSettingsError, load_webhook_settings
from streams.webhooks.ssrf import BlockedDestination, InvalidURL, SsrfGuard
from streams.webhooks.subscriptions import of_tenant


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no timezone; e.g. 2025-01-31T12:00:00Z")
    return parsed.astimezone(UTC)


@click.group()
def webhooks() -> None:
    """Webhook endpoints and their deliveries."""


@webhooks.command("create")
@click.option("--tenant", required=True, help="Tenant whose events the endpoint receives.")
@click.option("--url", required=True, help="Endpoint deliveries are POSTed to.")
@click.option(
    "--types",
    "types",
    multiple=True,
    required=True,
    help="Event type glob, e.g. 'agent.*'; repeatable.",
)
@click.option(
    "--ordered",
    is_flag=True,
    help="Deliver strictly in order, holding later events while one fails.",
)
@click.option("--description", default=None, help="Free text shown in listings.")
@clear_errors(InvalidURL, BlockedDestination, WebhookSettingsError, manage.InvalidSubscription)
def create(
    tenant: str, url: str, types: tuple[str, ...], ordered: bool, description: str | None
) -> None:
    """Register an endpoint; prints its id and signing secret (shown only this once)."""
    config = settings()
    webhook_settings = load_webhook_settings()

    async def run() -> dict[str, str]:
        # Refuse now what every attempt would refuse later.
        event = await manage.subscription(
            catalog_for(config),
            SsrfGuard(webhook_settings.allowed_networks, webhook_settings.allowed_hosts),
            tenant_id=tenant,
            url=url,
            event_types=types,
            ordered=ordered,
            description=description,
            source="cli",
        )
        async with connect(config) as bus, publishing(bus, "cli") as publisher:
            await publisher.publish(event)
        return {"webhook_id": event.data.webhook_id, "secret": event.data.secret}

    click.echo(json.dumps(asyncio.run(run())))


@webhooks.command("list")
@click.option("--tenant", required=True, help="Whose endpoints.")
@clear_errors(asyncpg.PostgresError, OSError)
def list_webhooks(tenant: str) -> None:
    """The tenant's endpoints, one JSON object per line (secrets are never shown)."""
    database_url = resolve_endpoints(settings()).database_url

    async def run() -> None:
        async with migrated_pool(database_url, 1) as pool, pool.acquire() as conn:
            await manage.install(conn)
            for endpoint in await of_tenant(conn, tenant):
                click.echo(
                    json.dumps(
                        {
                            "webhook_id": endpoint.webhook_id,
                            "url": endpoint.url,
                            "event_types": list(endpoint.event_types),
                            "ordered": endpoint.ordered,
                            "enabled": endpoint.enabled,
                            "reason": endpoint.reason,
                            "description": endpoint.description,
                        }
                    )
                )

    asyncio.run(run())


@webhooks.command("redeliver")
@click.option("--tenant", required=True, help="Whose deliveries.")
@click.option("--delivery", default=None, help="One delivery id (the webhook-id receivers saw).")
@click.option(
    "--failed-since",
    default=None,
    help="Every failed or dead delivery whose last attempt was at or after this ISO time.",
)
@clear_errors(manage.NothingToRedeliver, asyncpg.PostgresError, OSError)
def redeliver(tenant: str, delivery: str | None, failed_since: str | None) -> None:
    """Queue failed or dead deliveries again, due now; prints how many."""
    if (delivery is None) == (failed_since is None):
        raise click.UsageError("give exactly one of --delivery and --failed-since")
    since = _timestamp(failed_since) if failed_since is not None else None
    database_url = resolve_endpoints(settings()).database_url

    async def run() -> int:
        async with migrated_pool(database_url, 1) as pool, pool.acquire() as conn:
            await manage.install(conn)
            return await manage.redeliver(conn, tenant, delivery=delivery, failed_since=since)

    click.echo(f"re-queued {asyncio.run(run())} deliveries")
