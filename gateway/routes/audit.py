"""``/v1/audit``: the caller's tenant history, its hash-chain verification and signed heads.

The history streams from the event store page by page (``EventStore.read``,
decoded with ``event_store.decoding`` as ``ledgerbus replay`` does), so any
length is served in constant memory. Each NDJSON line is the line
``ledgerbus replay`` prints (position, then the envelope) with the row's chain
``hash`` added; signing secrets in ``webhook.*`` payloads are redacted. A page
holds at most ``limit`` events; when more match, a last line
``{"next_from_position": N}`` says where the next page starts. A row that no
longer decodes ends the stream with ``{"error": ...}`` (the status is sent).

Verification and checkpoints use the audit key as ``ledgerbus audit`` does
(``LEDGERBUS_AUDIT_KEY_PATH``, else ``<data_dir>/keys/audit_ed25519.pem``),
read on each request since the archiver may create it after the gateway starts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel, Field

from event_store.audit import NoEvents, verify_chain
from event_store.chain import GENESIS
from event_store.checkpoints import (
    KEY_FILE,
    AuditKeyError,
    Checkpoint,
    CheckpointKeys,
    UndecodableCheckpoint,
    checkpoint_decoder,
    key_id,
    load_public_key,
    public_pem,
)
from event_store.decoding import decode
from event_store.store import EventQuery, EventStore, StoredEvent
from gateway.auth.dependencies import require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.problems import Problem, problem_responses
from gateway.redaction import without_secrets
from gateway.services import GatewayServices, Services
from gateway.settings import GatewaySettings
from schemas.micros import to_micros
from schemas.models import AuditCheckpoint, Envelope
from schemas.serde import DecodeError, EventDeserializer

Auditor = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]

NDJSON = "application/x-ndjson"
MAX_EVENTS = 10_000
MAX_CHECKPOINTS = 1000
MAX_POSITION = 2**63 - 1  # bigint


class Verified(BaseModel):
    ok: bool
    length: int = Field(description="Rows verified: all of them when ok, those before the break")
    head: str = Field(description="Hex hash of the last verified row (32 zero bytes if none)")
    first_bad_position: int | None
    reason: str | None = Field(description="Why the chain breaks there, e.g. `changed_bytes`")
    detail: str | None
    checkpoints_verified: int


class PublicKey(BaseModel):
    key_id: str = Field(description="First 16 hex digits of SHA-256 of the raw public key")
    pem: str = Field(description="Ed25519 SubjectPublicKeyInfo PEM")

    @classmethod
    def of(cls, public_key: Ed25519PublicKey) -> PublicKey:
        return cls(key_id=key_id(public_key), pem=public_pem(public_key).decode())


class SignedHead(BaseModel):
    """One ``audit.checkpoint``: Ed25519 over ``signed_message_hex`` (see `ledgerbus audit
    export`): the chain held ``head_hash`` at ``position`` at ``signed_at``."""

    event_position: int = Field(description="Where the checkpoint event itself sits")
    position: int
    head_hash: str
    signed_at: datetime
    signed_at_micros: int
    signature: str = Field(description="Base64")
    key_id: str
    signed_message_hex: str
    signature_valid: bool | None = Field(
        description="Whether the signature verifies with `public_key`; null without a key"
    )

    @classmethod
    def of(
        cls, checkpoint: Checkpoint, event_position: int, public_key: Ed25519PublicKey | None
    ) -> SignedHead:
        valid = None
        if public_key is not None:
            valid = checkpoint.key_id == key_id(public_key) and checkpoint.signed_by(public_key)
        return cls(
            event_position=event_position,
            position=checkpoint.position,
            head_hash=checkpoint.head_hash.hex(),
            signed_at=checkpoint.signed_at,
            signed_at_micros=to_micros(checkpoint.signed_at),
            signature=base64.b64encode(checkpoint.signature).decode(),
            key_id=checkpoint.key_id,
            signed_message_hex=checkpoint.message().hex(),
            signature_valid=valid,
        )


class SignedHeads(BaseModel):
    public_key: PublicKey | None = Field(description="The audit key; null if none is configured")
    checkpoints: list[SignedHead] = Field(description="In position order")
    next_from_position: int | None = Field(description="`from_position` of the next page")


def audit_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1/audit", tags=["audit"], responses=problem_responses(401, 403, 429)
    )

    @router.get(
        "/events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "One JSON object per line: the events in position order, "
                'then `{"next_from_position": N}` if more match',
                "content": {NDJSON: {}},
            },
            **problem_responses(422),
        },
    )
    async def audit_events(
        principal: Auditor,
        services: Services,
        types: Annotated[
            list[str] | None,
            Query(description="Event types or globs (`agent.*`); repeat or comma-separate"),
        ] = None,
        subject: Annotated[str | None, Query(min_length=1, pattern=r"^[^\x00]+$")] = None,
        since: Annotated[AwareDatetime | None, Query(description="At or after")] = None,
        until: Annotated[AwareDatetime | None, Query(description="Strictly before")] = None,
        from_position: Annotated[int, Query(ge=1, le=MAX_POSITION, description="First")] = 1,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 1000,
    ) -> StreamingResponse:
        """The tenant's history in position order, streamed as NDJSON."""
        if since is not None and until is not None and since >= until:
            raise Problem(422, "since must be before until")
        patterns = [part.strip() for value in types or () for part in value.split(",")]
        if any(not pattern or "\x00" in pattern for pattern in patterns):
            reason = "an event type in types is empty or holds NUL"
            raise Problem(422, reason, errors=[{"path": "query.types", "reason": reason}])
        query = EventQuery(
            from_position=from_position, subject=subject, types=patterns, since=since, until=until
        )
        lines = _lines(
            EventStore(services.pool), services.deserializer, principal.tenant_id, query, limit
        )
        return StreamingResponse(lines, media_type=NDJSON)

    @router.get("/verify", responses=problem_responses(503))
    async def verify(principal: Auditor, services: Services) -> Verified:
        """Recompute the tenant's hash chain and check its signed checkpoints
        (what `ledgerbus audit verify --tenant` does)."""
        public_key = _public_key(services.settings)
        keys = CheckpointKeys(
            checkpoint_decoder(services.deserializer),
            {} if public_key is None else {key_id(public_key): public_key},
        )
        try:
            result = await verify_chain(services.pool, principal.tenant_id, checkpoints=keys)
        except NoEvents:  # an empty history is trivially intact
            return Verified(
                ok=True,
                length=0,
                head=GENESIS.hex(),
                first_bad_position=None,
                reason=None,
                detail=None,
                checkpoints_verified=0,
            )
        failure = result.failure
        return Verified(
            ok=result.ok,
            length=result.length,
            head=result.head.hex(),
            first_bad_position=None if failure is None else failure.position,
            reason=None if failure is None else failure.reason.value,
            detail=None if failure is None else failure.detail,
            checkpoints_verified=result.checkpoints,
        )

    @router.get("/checkpoints", responses=problem_responses(503))
    async def checkpoints(
        principal: Auditor,
        services: Services,
        from_position: Annotated[int, Query(ge=1, le=MAX_POSITION, description="First")] = 1,
        limit: Annotated[int, Query(ge=1, le=MAX_CHECKPOINTS)] = 100,
    ) -> SignedHeads:
        """The tenant's signed chain heads and the public key that checks them."""
        return await _signed_heads(
            services, principal.tenant_id, from_position, limit, _public_key(services.settings)
        )

    return router


async def _lines(
    store: EventStore,
    deserializer: EventDeserializer,
    tenant_id: str,
    query: EventQuery,
    limit: int,
) -> AsyncIterator[str]:
    sent = 0
    async for stored in store.read(tenant_id, query, page_size=min(limit + 1, 1000)):
        if sent == limit:
            yield json.dumps({"next_from_position": stored.position}) + "\n"
            return
        try:
            event = await decode(deserializer, stored.schema_id, stored.body)
        except DecodeError as exc:  # the status is sent: say so in the body, and stop
            yield json.dumps({"error": f"{_damaged(stored.position)}: {exc}"}) + "\n"
            return
        yield _line(stored, without_secrets(event))
        sent += 1


def _line(stored: StoredEvent, event: Envelope[Any]) -> str:
    """``ledgerbus replay``'s NDJSON line with the chain hash after the position."""
    envelope = event.model_dump_json()[1:]
    return f'{{"position":{stored.position},"hash":"{stored.hash.hex()}",{envelope}\n'


async def _signed_heads(
    services: GatewayServices,
    tenant_id: str,
    from_position: int,
    limit: int,
    public_key: Ed25519PublicKey | None,
) -> SignedHeads:
    shown = None if public_key is None else PublicKey.of(public_key)
    decode_checkpoint = checkpoint_decoder(services.deserializer)
    query = EventQuery(from_position=from_position, types=[AuditCheckpoint.event_type])
    found: list[SignedHead] = []
    store = EventStore(services.pool)
    async for stored in store.read(tenant_id, query, page_size=min(limit + 1, 1000)):
        if len(found) == limit:
            return SignedHeads(
                public_key=shown, checkpoints=found, next_from_position=stored.position
            )
        try:
            checkpoint = await decode_checkpoint(tenant_id, stored.schema_id, stored.body)
        except UndecodableCheckpoint as exc:
            raise Problem(500, f"{_damaged(stored.position)}: {exc}") from None
        found.append(SignedHead.of(checkpoint, stored.position, public_key))
    return SignedHeads(public_key=shown, checkpoints=found, next_from_position=None)


def _public_key(settings: GatewaySettings) -> Ed25519PublicKey | None:
    """The audit public key, or None while there is none (a bad key file is a 503)."""
    path = settings.audit_key_path or settings.data_dir / KEY_FILE
    if not path.exists():
        return None
    try:
        return load_public_key(path)
    except AuditKeyError as exc:
        raise Problem(503, f"audit key unusable: {exc}") from None


def _damaged(position: int) -> str:
    return f"the event at position {position} cannot be decoded (see /v1/audit/verify)"
