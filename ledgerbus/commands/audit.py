"""``ledgerbus audit``: verify the tenants' hash chains and export them for third parties.

The audit key is ``--key``, else ``$LEDGERBUS_AUDIT_KEY_PATH``, else
``<data_dir>/keys/audit_ed25519.pem``: a private or public Ed25519 PEM file.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from event_store.audit import NoEvents, Verification, tenants, verify_chain
from event_store.checkpoints import (
    KEY_FILE,
    AuditKeyError,
    CheckpointKeys,
    DecodeCheckpoint,
    checkpoint_decoder,
    key_id,
    load_public_key,
)
from event_store.export import ExportError, export_history
from event_store.store import EventStore
from ledgerbus.bus import connect
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.database import migrated_pool
from ledgerbus.commands.progress import Progress

key_option = click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="LEDGERBUS_AUDIT_KEY_PATH",
    default=None,
    help="Audit key PEM (private or public) [env LEDGERBUS_AUDIT_KEY_PATH; "
    "default <data_dir>/keys/audit_ed25519.pem].",
)


@asynccontextmanager
async def _store_and_decoder() -> AsyncIterator[tuple[EventStore, DecodeCheckpoint]]:
    """The event store, and a checkpoint decoder backed by the schema registry."""
    async with connect(settings()) as bus, migrated_pool(bus.endpoints.database_url, 1) as pool:
        yield EventStore(pool), checkpoint_decoder(bus.deserializer())


def audit_key_path(given: Path | None) -> Path:
    """``--key`` (which click fills from ``$LEDGERBUS_AUDIT_KEY_PATH``), else the data dir's."""
    return given if given is not None else settings().data_dir / KEY_FILE


@click.group()
def audit() -> None:
    """The tamper-evident audit chain."""


@audit.command("verify")
@click.option("--tenant", default=None, help="Only this tenant (default: every tenant).")
@key_option
@clear_errors(asyncpg.PostgresError, OSError, NoEvents, AuditKeyError)
def audit_verify(tenant: str | None, key_path: Path | None) -> None:
    """Recompute every chain and check its checkpoints; exit 1 if any chain fails."""
    path = audit_key_path(key_path)
    # Without the default key, checkpoints fail as unknown_checkpoint_key; a key
    # that was asked for by name must exist.
    public_keys: dict[str, Ed25519PublicKey] = {}
    if key_path is not None or path.exists():
        public_key = load_public_key(path)
        public_keys[key_id(public_key)] = public_key

    async def run() -> int:
        async with _store_and_decoder() as (store, decode):
            keys = CheckpointKeys(decode, public_keys)
            names = [tenant] if tenant is not None else await tenants(store.pool)
            if not names:
                click.echo("no tenants to verify", err=True)
            failed = 0
            for name in names:
                progress = Progress(f"verify {name}")
                result = await verify_chain(
                    store.pool, name, checkpoints=keys, progress=progress.add
                )
                progress.done()
                click.echo(_describe(result))
                failed += not result.ok
            return 1 if failed else 0

    sys.exit(asyncio.run(run()))


def _describe(result: Verification) -> str:
    if result.failure is None:
        return (
            f"ok {result.tenant_id} length={result.length} head={result.head.hex()} "
            f"checkpoints={result.checkpoints}"
        )
    failure = result.failure
    return (
        f"FAILED {result.tenant_id} position={failure.position} reason={failure.reason} "
        f"detail={failure.detail}"
    )


@audit.command("export")
@click.option("--tenant", required=True, help="Tenant whose history to export.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for history.ndjson, checkpoint.json and audit_public_key.pem.",
)
@key_option
@clear_errors(asyncpg.PostgresError, OSError, NoEvents, AuditKeyError, ExportError)
def audit_export(tenant: str, out: Path, key_path: Path | None) -> None:
    """Write a tenant's history, latest signed checkpoint and public key for a third party."""
    public_key = load_public_key(audit_key_path(key_path))

    async def run() -> None:
        progress = Progress(f"export {tenant}")
        async with _store_and_decoder() as (store, decode):
            exported = await export_history(
                store, tenant, out, decode=decode, public_key=public_key, progress=progress.add
            )
        progress.done()
        click.echo(
            f"exported {exported.events} events of {tenant} to {out}; latest checkpoint at "
            f"position {exported.checkpoint.position} (event {exported.checkpoint_event_position})"
        )

    asyncio.run(run())
