"""``ledgerbus keys``: mint, list and revoke gateway API keys from the command line.

The same store as ``/v1/api-keys``; this is how the first admin key of a
tenant is made (``ledgerbus dev`` makes one for the ``default`` tenant).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import asyncpg
import click

from gateway.auth.api_keys import ApiKeyStore, InvalidKeyRequest
from gateway.auth.rbac import Permission, Role
from gateway.settings import GatewaySettingsError, load_gateway_settings
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.database import migrated_pool
from ledgerbus.discovery import resolve_database_url


def _expiry(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None


@click.group()
def keys() -> None:
    """Gateway API keys (stored hashed; shown once)."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant every request with the key runs in.")
@click.option("--role", required=True, type=click.Choice([role.value for role in Role]))
@click.option(
    "--scopes",
    multiple=True,
    type=click.Choice([permission.value for permission in Permission]),
    help="Narrow the role to these permissions; repeatable. Default: all of the role's.",
)
@click.option(
    "--tier", default=None, help="Rate-limit tier (default: LEDGERBUS_RATE_LIMIT_DEFAULT_TIER)."
)
@click.option("--name", default="", help="Free text shown in listings.")
@click.option(
    "--expires-at", default=None, help="ISO 8601 time with zone, e.g. 2030-01-01T00:00:00Z."
)
@clear_errors(InvalidKeyRequest, GatewaySettingsError, asyncpg.PostgresError, OSError)
def create(
    tenant: str,
    role: str,
    scopes: tuple[str, ...],
    tier: str | None,
    name: str,
    expires_at: str | None,
) -> None:
    """Mint a key; prints it as JSON (`api_key` is shown only this once)."""
    gateway_settings = load_gateway_settings()
    tier = tier or gateway_settings.rate_limit_default_tier
    if tier not in gateway_settings.rate_limit_tiers:
        known = ", ".join(sorted(gateway_settings.rate_limit_tiers))
        raise click.BadParameter(f"unknown tier {tier!r}; known: {known}", param_hint="--tier")
    expiry = _expiry(expires_at)
    database_url = resolve_database_url(settings())

    async def run() -> dict[str, object]:
        async with migrated_pool(database_url, 1) as pool:
            created = await ApiKeyStore(pool).create(
                tenant_id=tenant,
                role=role,
                tier=tier,
                scopes=scopes or None,
                name=name,
                expires_at=expiry,
            )
            return {**created.key.as_json(), "api_key": created.token}

    click.echo(json.dumps(asyncio.run(run())))


@keys.command("list")
@click.option("--tenant", required=True)
@clear_errors(asyncpg.PostgresError, OSError)
def list_keys(tenant: str) -> None:
    """The tenant's keys, one JSON object per line (never the secrets)."""
    database_url = resolve_database_url(settings())

    async def run() -> None:
        async with migrated_pool(database_url, 1) as pool:
            for key in await ApiKeyStore(pool).list(tenant):
                click.echo(json.dumps(key.as_json()))

    asyncio.run(run())


@keys.command("revoke")
@click.option("--tenant", required=True)
@click.argument("key_id")
@clear_errors(asyncpg.PostgresError, OSError)
def revoke(tenant: str, key_id: str) -> None:
    """Revoke a key at once, in every gateway."""
    database_url = resolve_database_url(settings())

    async def run() -> bool:
        async with migrated_pool(database_url, 1) as pool:
            return await ApiKeyStore(pool).revoke(tenant, key_id)

    if not asyncio.run(run()):
        click.echo(f"error: tenant {tenant!r} has no API key {key_id!r}", err=True)
        raise SystemExit(2)
    click.echo(f"revoked {key_id}")
