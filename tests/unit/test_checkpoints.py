"""Checkpoint signatures, the signed byte layout, and the audit key file."""

from __future__ import annotations

import dataclasses
import hashlib
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from event_store.checkpoints import (
    AuditKeyError,
    Checkpoint,
    Signer,
    key_id,
    load_or_create_key,
    load_public_key,
    public_pem,
    signed_message,
)

HEAD = bytes(range(32))
MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_signed_message_layout_is_exact() -> None:
    micros = 1767323045678901  # MOMENT since the epoch
    expected = (
        b"ledgerbus.audit.checkpoint.v1\x00"
        + b"acme\x00"
        + (1000).to_bytes(8, "big")
        + HEAD
        + micros.to_bytes(8, "big", signed=True)
    )
    assert signed_message("acme", 1000, HEAD, MOMENT) == expected


def test_signature_covers_every_field() -> None:
    private_key = Ed25519PrivateKey.generate()
    signer = Signer(private_key)
    checkpoint = signer.sign("acme", 1000, HEAD, MOMENT)
    assert checkpoint.signed_by(signer.public_key)
    # Ed25519 is deterministic: the signature is over exactly the documented bytes.
    assert checkpoint.signature == private_key.sign(signed_message("acme", 1000, HEAD, MOMENT))
    altered = [
        dataclasses.replace(checkpoint, tenant_id="acme2"),
        dataclasses.replace(checkpoint, position=1001),
        dataclasses.replace(checkpoint, head_hash=bytes(32)),
        dataclasses.replace(checkpoint, signed_at=MOMENT + timedelta(microseconds=1)),
    ]
    for forged in altered:
        assert not forged.signed_by(signer.public_key)
    assert not checkpoint.signed_by(Ed25519PrivateKey.generate().public_key())


def test_key_id_is_a_prefix_of_the_raw_public_key_hash() -> None:
    public_key = Ed25519PrivateKey.generate().public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(public_key) == hashlib.sha256(raw).hexdigest()[:16]
    signer = Signer(Ed25519PrivateKey.generate())
    assert signer.sign("acme", 1, HEAD).key_id == key_id(signer.public_key)


def test_payload_round_trip() -> None:
    checkpoint = Signer(Ed25519PrivateKey.generate()).sign("acme", 7, HEAD, MOMENT)
    assert Checkpoint.from_payload("acme", checkpoint.payload()) == checkpoint


def test_key_is_created_private_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys" / "audit_ed25519.pem"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create_key(path)
    assert again.private_bytes_raw() == first.private_bytes_raw()
    assert [p.name for p in path.parent.iterdir()] == ["audit_ed25519.pem"]


def test_public_key_loads_from_either_half(tmp_path: Path) -> None:
    private = tmp_path / "private.pem"
    key = load_or_create_key(private)
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(key.public_key()))
    expected = key_id(key.public_key())
    assert key_id(load_public_key(private)) == expected
    assert key_id(load_public_key(public)) == expected


def test_bad_key_files_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(AuditKeyError, match="no audit key at"):
        load_public_key(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(AuditKeyError, match="not a PEM file"):
        load_public_key(garbage)
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(AuditKeyError, match="not an Ed25519 public key"):
        load_public_key(rsa_file)
    with pytest.raises(AuditKeyError):
        load_or_create_key(garbage)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(AuditKeyError, match="not an unencrypted PEM private key"):
        load_public_key(broken)
