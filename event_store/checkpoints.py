"""Signed audit checkpoints: an Ed25519 signature over a tenant's chain head.

A hash chain alone proves only that rows agree with each other; whoever can
rewrite the table can rewrite the whole chain after the row they changed. A
checkpoint pins the head at one moment with a key the database does not hold,
so a rewritten chain no longer passes through it.

**Signed message** (version 1), byte for byte, so anyone can check a signature::

    b"ledgerbus.audit.checkpoint.v1\\x00"
    tenant id, UTF-8, then b"\\x00"
    position    8 bytes, unsigned big-endian
    head hash   32 bytes (the chain hash stored at that position)
    signed_at   8 bytes, signed big-endian: microseconds since 1970-01-01 UTC

The key id is the first 16 hex digits of SHA-256 over the raw 32-byte public key.
The private key is a PKCS#8 PEM file, created with mode 0600 on first use.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from event_store.decoding import decode
from schemas.micros import to_micros
from schemas.models import AuditCheckpoint
from schemas.serde import DecodeError, EventDeserializer

MESSAGE_PREFIX = b"ledgerbus.audit.checkpoint.v1\x00"
_FIXED_PART = struct.Struct(">Q32sq")

#: Where the key lives under the data dir unless a path is given.
KEY_FILE = Path("keys") / "audit_ed25519.pem"


class AuditKeyError(ValueError):
    """A key file that cannot be read as an Ed25519 key."""


class UndecodableCheckpoint(ValueError):
    """An ``audit.checkpoint`` row whose body is not a valid checkpoint."""


def signed_message(tenant_id: str, position: int, head_hash: bytes, signed_at: datetime) -> bytes:
    """The exact bytes a checkpoint signature covers (layout in the module docstring)."""
    return (
        MESSAGE_PREFIX
        + tenant_id.encode()
        + b"\x00"
        + _FIXED_PART.pack(position, head_hash, to_micros(signed_at))
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed claim: tenant's chain had ``head_hash`` at ``position`` at ``signed_at``."""

    tenant_id: str
    position: int
    head_hash: bytes
    signed_at: datetime
    signature: bytes
    key_id: str

    def message(self) -> bytes:
        return signed_message(self.tenant_id, self.position, self.head_hash, self.signed_at)

    def signed_by(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(self.signature, self.message())
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_payload(cls, tenant_id: str, payload: AuditCheckpoint) -> Checkpoint:
        return cls(
            tenant_id=tenant_id,
            position=payload.position,
            head_hash=payload.head_hash,
            signed_at=payload.signed_at,
            signature=payload.signature,
            key_id=payload.key_id,
        )

    def payload(self) -> AuditCheckpoint:
        """The ``data`` of the ``audit.checkpoint`` event that publishes this checkpoint."""
        return AuditCheckpoint(
            position=self.position,
            head_hash=self.head_hash,
            signed_at=self.signed_at,
            signature=self.signature,
            key_id=self.key_id,
        )


class Signer:
    """Signs chain heads with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(
        self,
        tenant_id: str,
        position: int,
        head_hash: bytes,
        signed_at: datetime | None = None,
    ) -> Checkpoint:
        moment = (signed_at or datetime.now(UTC)).astimezone(UTC)
        signature = self._private_key.sign(signed_message(tenant_id, position, head_hash, moment))
        return Checkpoint(tenant_id, position, head_hash, moment, signature, self.key_id)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The private key at ``path``, generating it (mode 0600) if the file does not exist.

    The new key is written to a private temporary file and hard-linked into
    place, so two processes starting together agree on one key and nobody
    reads a half-written file.
    """
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process won the race: use its key
    finally:
        temporary.unlink()
    return load_private_key(path)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read_pem(path), password=None)
    except (ValueError, TypeError) as exc:  # TypeError: encrypted with a passphrase
        raise AuditKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The public key in a PEM file holding either half of an Ed25519 key pair."""
    pem = _read_pem(path)
    if b"PRIVATE KEY" in pem:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise AuditKeyError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_pem(path: Path) -> bytes:
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise AuditKeyError(f"no audit key at {path}") from None
    if b"-----BEGIN" not in pem:
        raise AuditKeyError(f"{path} is not a PEM file")
    return pem


#: Reads a stored ``audit.checkpoint`` row: (tenant, schema id, body) -> checkpoint.
DecodeCheckpoint = Callable[[str, int, bytes], Awaitable[Checkpoint]]


def checkpoint_decoder(deserializer: EventDeserializer) -> DecodeCheckpoint:
    """Decode checkpoint rows with the schema registry behind ``deserializer``."""

    async def decode_checkpoint(tenant_id: str, schema_id: int, body: bytes) -> Checkpoint:
        try:
            event = await decode(deserializer, schema_id, body)
        except DecodeError as exc:
            raise UndecodableCheckpoint(str(exc)) from exc
        if not isinstance(event.data, AuditCheckpoint):
            raise UndecodableCheckpoint(f"body is a {event.type} event, not audit.checkpoint")
        return Checkpoint.from_payload(tenant_id, event.data)

    return decode_checkpoint


@dataclass(frozen=True)
class CheckpointKeys:
    """What verification needs to check checkpoints: a decoder and the trusted keys."""

    decode: DecodeCheckpoint
    public_keys: Mapping[str, Ed25519PublicKey]
