"""Exporting a tenant's audit history so a third party can verify it without ledgerbus.

``export_history`` writes three files into one folder:

``history.ndjson``
    One JSON object per event, in position order (1, 2, 3 ... with no gap)::

        {"position": 1, "event_id": "<uuid>", "type": "agent.started",
         "subject": "run-1", "time": "2026-01-01T00:00:00.000000Z",
         "schema_id": 3, "body": "<base64>", "prev_hash": "<hex>", "hash": "<hex>"}

    ``body`` is the event's canonical bytes (see ``event_store.chain``), so
    ``hash = SHA-256(bytes.fromhex(prev_hash) + base64decode(body))`` and each
    line's ``prev_hash`` is the previous line's ``hash`` (32 zero bytes for
    position 1). Lines of type ``audit.checkpoint`` also carry the decoded
    checkpoint (the same fields as ``checkpoint.json`` below, without
    ``tenant_id``, ``event_position`` and ``signed_message_hex``).

``audit_public_key.pem``
    The Ed25519 public key (SubjectPublicKeyInfo PEM) of the audit signing key.

``checkpoint.json``
    The latest checkpoint in the history::

        {"tenant_id": "acme", "event_position": 1001, "position": 1000,
         "head_hash": "<hex>", "signed_at": "2026-01-01T00:00:00.000000Z",
         "signed_at_micros": 1767225600000000, "signature": "<base64>",
         "key_id": "<16 hex digits>", "signed_message_hex": "<hex>"}

    ``signature`` is Ed25519 over ``b"ledgerbus.audit.checkpoint.v1\\x00" +
    tenant_id (UTF-8) + b"\\x00" + position (8 bytes, big-endian) + head_hash
    (32 bytes) + signed_at_micros (8 bytes, big-endian, signed)``, which
    ``signed_message_hex`` spells out. The history is authentic up to
    ``position`` if the signature verifies and the line at ``position`` has
    ``hash == head_hash``; ``event_position`` is the line holding the checkpoint.

Times are RFC 3339 in UTC with microseconds. The history is written to a
temporary file and renamed last, so a failed export leaves no history behind.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from event_store.audit import NoEvents
from event_store.checkpoints import Checkpoint, DecodeCheckpoint, key_id, public_pem
from event_store.store import EventStore, StoredEvent
from schemas.micros import to_micros
from schemas.models import AuditCheckpoint

HISTORY_FILE = "history.ndjson"
PUBLIC_KEY_FILE = "audit_public_key.pem"
CHECKPOINT_FILE = "checkpoint.json"

#: Called with 1 after each event is written.
Progress = Callable[[int], None]


class ExportError(ValueError):
    """The history cannot be exported so that a third party could verify it."""


@dataclass(frozen=True)
class Exported:
    events: int
    checkpoint: Checkpoint
    checkpoint_event_position: int


async def export_history(
    store: EventStore,
    tenant_id: str,
    out: Path,
    *,
    decode: DecodeCheckpoint,
    public_key: Ed25519PublicKey,
    progress: Progress | None = None,
) -> Exported:
    """Write the tenant's history, latest checkpoint and public key into ``out``.

    Files are opened and renamed in a worker thread; line writes are buffered.
    """
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    partial = out / f".{HISTORY_FILE}.partial"
    try:
        file = await asyncio.to_thread(partial.open, "w", encoding="utf-8")
        try:
            exported = await _write_history(store, tenant_id, file, decode, progress)
        finally:
            file.close()
        await asyncio.to_thread(_finish, out, partial, tenant_id, exported, public_key)
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    return exported


def _finish(
    out: Path, partial: Path, tenant_id: str, exported: Exported, public_key: Ed25519PublicKey
) -> None:
    """Write the key and the checkpoint, then put the history in place."""
    expected_key = key_id(public_key)
    if exported.checkpoint.key_id != expected_key:
        raise ExportError(
            f"the latest checkpoint is signed by key {exported.checkpoint.key_id}, "
            f"but the given key is {expected_key}"
        )
    (out / PUBLIC_KEY_FILE).write_bytes(public_pem(public_key))
    document = {
        "tenant_id": tenant_id,
        "event_position": exported.checkpoint_event_position,
        **_checkpoint_fields(exported.checkpoint),
        "signed_message_hex": exported.checkpoint.message().hex(),
    }
    (out / CHECKPOINT_FILE).write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(out / HISTORY_FILE)


async def _write_history(
    store: EventStore,
    tenant_id: str,
    file: TextIO,
    decode: DecodeCheckpoint,
    progress: Progress | None,
) -> Exported:
    count = 0
    latest: tuple[Checkpoint, int] | None = None
    async for event in store.read(tenant_id, page_size=5000):
        line = _line(event)
        if event.type == AuditCheckpoint.event_type:
            checkpoint = await decode(tenant_id, event.schema_id, event.body)
            line["checkpoint"] = _checkpoint_fields(checkpoint)
            latest = (checkpoint, event.position)
        file.write(json.dumps(line, separators=(",", ":")) + "\n")
        count += 1
        if progress is not None:
            progress(1)
    if count == 0:
        raise NoEvents(f"no events for tenant {tenant_id!r}")
    if latest is None:
        raise ExportError(
            f"tenant {tenant_id!r} has no audit.checkpoint yet: nothing signed anchors its history"
        )
    return Exported(count, *latest)


def _line(event: StoredEvent) -> dict[str, Any]:
    return {
        "position": event.position,
        "event_id": str(event.event_id),
        "type": event.type,
        "subject": event.subject,
        "time": rfc3339(event.time),
        "schema_id": event.schema_id,
        "body": base64.b64encode(event.body).decode(),
        "prev_hash": event.prev_hash.hex(),
        "hash": event.hash.hex(),
    }


def _checkpoint_fields(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "position": checkpoint.position,
        "head_hash": checkpoint.head_hash.hex(),
        "signed_at": rfc3339(checkpoint.signed_at),
        "signed_at_micros": to_micros(checkpoint.signed_at),
        "signature": base64.b64encode(checkpoint.signature).decode(),
        "key_id": checkpoint.key_id,
    }


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
