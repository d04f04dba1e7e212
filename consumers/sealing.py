"""Sealed agent-to-agent payloads: HPKE to the recipient, Ed25519 by the sender.

The envelope of the event carrying a box (tenant, event id and type,
correlation id, when, who to whom, with which keys) is its ``Binding``. The
binding is the HPKE ``info``, so the payload only decrypts under the same
envelope, and the sender signs it together with ``enc`` and the ciphertext, so
the recipient knows who sealed what, for which event. A box lifted into
another event, re-addressed, re-signed, replayed or altered in any byte is
refused (``Rejected``) before anything is decrypted, and counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import Counter

from consumers.identity import (
    ENC_LENGTHS,
    SUITES,
    AgentIdentity,
    HpkePrivateKey,
    hpke_public_key,
)
from consumers.key_directory import AgentKey
from consumers.replay_guard import Position
from schemas.micros import to_micros
from schemas.models.agent import SealedBox
from schemas.models.enums import HpkeSuite

DOMAIN = b"ledgerbus-sealed-v1\0"
SIGNATURE_BYTES = 64

OPENED = Counter("ledgerbus_sealed_opened_total", "Sealed boxes checked and decrypted")
REJECTED = Counter("ledgerbus_sealed_rejected_total", "Sealed boxes refused, by reason", ["reason"])


class RejectionReason(StrEnum):
    MISSING_SIGNATURE = "missing_signature"
    BAD_SIGNATURE = "bad_signature"
    WRONG_RECIPIENT = "wrong_recipient"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    STALE = "stale"
    REPLAYED = "replayed"
    ENVELOPE_MISMATCH = "envelope_mismatch"
    UNSUPPORTED_SUITE = "unsupported_suite"
    UNDECRYPTABLE = "undecryptable"


class Rejected(Exception):
    """A box that must not be acted on: ``reason`` for counting, ``detail`` for people."""

    def __init__(self, reason: RejectionReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Binding:
    """The envelope a box is sealed for; both HPKE and the signature cover it."""

    tenant_id: str
    message_id: str
    purpose: str
    """The type of the event carrying the box (``agent.message``, ``agent.handoff``...)."""
    correlation_id: str | None
    sealed_at: datetime
    sender: str
    recipient: str
    sender_key_id: str
    recipient_key_id: str
    suite: HpkeSuite

    def canonical(self) -> bytes:
        """The fields in order, each absent (0) or present (1) with a 4-byte length:
        no two bindings encode alike."""
        parts = [DOMAIN]
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                parts.append(b"\0")
                continue
            text = str(to_micros(value)) if isinstance(value, datetime) else str(value)
            raw = text.encode()
            parts.append(b"\1" + len(raw).to_bytes(4, "big") + raw)
        return b"".join(parts)

    def signed_bytes(self, enc: bytes, ciphertext: bytes) -> bytes:
        """What the sender's Ed25519 key signs: the binding, ``enc`` (length first), the
        ciphertext."""
        return self.canonical() + len(enc).to_bytes(4, "big") + enc + ciphertext


def seal(
    plaintext: bytes,
    *,
    identity: AgentIdentity,
    recipient: AgentKey,
    tenant_id: str,
    message_id: str | uuid.UUID,
    purpose: str,
    correlation_id: str | None,
    sealed_at: datetime,
) -> SealedBox:
    """``plaintext`` sealed to ``recipient`` (a key from the directory, normally the
    agent's current one) for the event ``message_id``, signed by ``identity``."""
    if sealed_at.tzinfo is None:
        raise ValueError("sealed_at must be timezone-aware")
    if recipient.revoked_at is not None:
        raise ValueError(f"key {recipient.key_id} of {recipient.agent_name} is revoked")
    suite = next((s for s in SUITES if s.value == recipient.suite), None)
    if suite is None:
        raise ValueError(f"cannot seal to a key of suite {recipient.suite!r}")
    binding = Binding(
        tenant_id=tenant_id,
        message_id=str(message_id),
        purpose=purpose,
        correlation_id=correlation_id,
        sealed_at=sealed_at.astimezone(UTC),
        sender=identity.agent_name,
        recipient=recipient.agent_name,
        sender_key_id=identity.key_id,
        recipient_key_id=recipient.key_id,
        suite=suite,
    )
    public_key = hpke_public_key(suite, recipient.hpke_public_key)
    sealed = SUITES[suite].encrypt(plaintext, public_key, info=binding.canonical())
    enc, ciphertext = sealed[: ENC_LENGTHS[suite]], sealed[ENC_LENGTHS[suite] :]
    return SealedBox(
        sender=binding.sender,
        recipient=binding.recipient,
        sender_key_id=binding.sender_key_id,
        recipient_key_id=binding.recipient_key_id,
        suite=suite,
        enc=enc,
        ciphertext=ciphertext,
        signature=identity.signing_key.sign(binding.signed_bytes(enc, ciphertext)),
        message_id=binding.message_id,
        sealed_at=binding.sealed_at,
    )


class SigningKeys(Protocol):
    """Key lookups the opener needs (``KeyDirectory`` in production)."""

    async def signing_key(
        self, tenant_id: str, agent_name: str, key_id: str
    ) -> AgentKey | None: ...


class Sightings(Protocol):
    """Replay detection the opener needs (``ReplayGuard`` in production)."""

    async def first_sighting(
        self, tenant_id: str, recipient: str, message_id: str, position: Position
    ) -> bool: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


class Opener:
    """Checks boxes addressed to ``identity`` and, only if every check passes, decrypts."""

    def __init__(
        self,
        identity: AgentIdentity,
        directory: SigningKeys,
        replay: Sightings,
        window: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.identity = identity
        self.directory = directory
        self.replay = replay
        self.window = window
        self.clock = clock

    async def open(
        self,
        box: SealedBox,
        *,
        tenant_id: str,
        message_id: str | uuid.UUID,
        purpose: str,
        correlation_id: str | None,
        position: Position,
        sealed_at: datetime | None = None,
        window: timedelta | None = None,
    ) -> bytes:
        """The plaintext of ``box``, carried by the event ``message_id`` of type
        ``purpose`` at Kafka ``position``; raises ``Rejected`` (counted) otherwise."""
        try:
            plaintext = await self._open(
                box,
                tenant_id=tenant_id,
                message_id=str(message_id),
                purpose=purpose,
                correlation_id=correlation_id,
                position=position,
                sealed_at=sealed_at,
                window=self.window if window is None else window,
            )
        except Rejected as rejected:
            REJECTED.labels(rejected.reason).inc()
            raise
        OPENED.inc()
        return plaintext

    async def _open(
        self,
        box: SealedBox,
        *,
        tenant_id: str,
        message_id: str,
        purpose: str,
        correlation_id: str | None,
        position: Position,
        sealed_at: datetime | None,
        window: timedelta,
    ) -> bytes:
        if len(box.signature) != SIGNATURE_BYTES:
            raise Rejected(
                RejectionReason.MISSING_SIGNATURE,
                f"{len(box.signature)} bytes where an Ed25519 signature has {SIGNATURE_BYTES}",
            )
        if box.message_id is None or box.sealed_at is None:
            # Without them the box is not bound to an event: no signature of ours covers it.
            raise Rejected(RejectionReason.MISSING_SIGNATURE, "no message id or seal time")
        if box.message_id != message_id:
            raise Rejected(
                RejectionReason.ENVELOPE_MISMATCH,
                f"sealed for event {box.message_id}, carried by event {message_id}",
            )
        if sealed_at is not None and box.sealed_at != sealed_at:
            raise Rejected(
                RejectionReason.ENVELOPE_MISMATCH,
                f"sealed at {box.sealed_at.isoformat()}, the event says {sealed_at.isoformat()}",
            )
        me = self.identity.agent_name
        if box.recipient != me:
            raise Rejected(
                RejectionReason.WRONG_RECIPIENT, f"addressed to {box.recipient!r}, not {me!r}"
            )
        binding = Binding(
            tenant_id=tenant_id,
            message_id=message_id,
            purpose=purpose,
            correlation_id=correlation_id,
            sealed_at=box.sealed_at,
            sender=box.sender,
            recipient=box.recipient,
            sender_key_id=box.sender_key_id,
            recipient_key_id=box.recipient_key_id,
            suite=box.suite,
        )
        await self._check_signature(box, binding)
        private_key = await self._recipient_key(box, tenant_id)
        now = self.clock()
        if abs(now - box.sealed_at) > window:
            raise Rejected(
                RejectionReason.STALE,
                f"sealed at {box.sealed_at.isoformat()}, more than {window} from {now.isoformat()}",
            )
        if not await self.replay.first_sighting(tenant_id, me, message_id, position):
            raise Rejected(
                RejectionReason.REPLAYED, f"event {message_id} was accepted at another position"
            )
        try:
            return SUITES[box.suite].decrypt(
                box.enc + box.ciphertext, private_key, info=binding.canonical()
            )
        except (InvalidTag, ValueError, TypeError) as exc:
            raise Rejected(RejectionReason.UNDECRYPTABLE, f"HPKE open failed: {exc!r}") from None

    async def _check_signature(self, box: SealedBox, binding: Binding) -> None:
        """The sender's registered, unrevoked key signed exactly this binding and bytes."""
        key = await self.directory.signing_key(binding.tenant_id, box.sender, box.sender_key_id)
        if key is None:
            raise Rejected(
                RejectionReason.UNKNOWN_KEY,
                f"{box.sender!r} has no key {box.sender_key_id!r} in the directory",
            )
        if key.revoked_at is not None:
            raise Rejected(
                RejectionReason.REVOKED_KEY,
                f"key {box.sender_key_id!r} of {box.sender!r} was revoked",
            )
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(key.signing_public_key).verify(
                box.signature, binding.signed_bytes(box.enc, box.ciphertext)
            )
        except (InvalidSignature, ValueError):
            raise Rejected(
                RejectionReason.BAD_SIGNATURE,
                f"not signed by key {box.sender_key_id!r} of {box.sender!r} for this envelope",
            ) from None

    async def _recipient_key(self, box: SealedBox, tenant_id: str) -> HpkePrivateKey:
        """Our private key the box is sealed to, in its suite, if the directory still lets
        us use it: not revoked, and for a rotated-out key within its grace period."""
        key_id = box.recipient_key_id
        private_key = self.identity.hpke_private_key(key_id)
        if private_key is None:
            raise Rejected(RejectionReason.UNKNOWN_KEY, f"we hold no key {key_id!r}")
        suite = self.identity.key_suite(key_id)
        if box.suite != suite:
            raise Rejected(
                RejectionReason.UNSUPPORTED_SUITE,
                f"sealed with {box.suite!s}, but key {key_id!r} is {suite!s}",
            )
        published = await self.directory.signing_key(tenant_id, box.recipient, key_id)
        if published is None:
            return private_key  # not projected yet: nothing says it is revoked or retired
        if published.revoked_at is not None:
            raise Rejected(RejectionReason.REVOKED_KEY, f"our key {key_id!r} was revoked")
        grace_end = published.retired_at
        if key_id != self.identity.key_id and grace_end is not None and self.clock() >= grace_end:
            raise Rejected(
                RejectionReason.UNKNOWN_KEY,
                f"our key {key_id!r} was rotated out, its grace period over since "
                f"{grace_end.isoformat()}",
            )
        return private_key
