"""An agent's own keys: an Ed25519 signing key and an HPKE key pair per key id.

The private keys live in one JSON keyring file under the data dir, readable by
the owner only (0600, directory 0700), so an agent keeps its identity across
restarts. A keyring others can read is refused rather than used: its keys must
be taken as leaked. Rotating makes a new key id and keeps the old private keys,
so boxes sealed to an old key during its grace period still open.

The HPKE suite is X25519 by default; the hybrid ML-KEM-768+X25519 suite
resists a future quantum computer. Its public key is published as the ML-KEM-768
public key (1184 bytes) followed by the X25519 one (32), the layout the gateway
checks.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from schemas.models.enums import HpkeSuite

MLKEM768_PUBLIC_BYTES = 1184

#: The HPKE suites agents can seal with, by the name the schemas carry.
SUITES: dict[HpkeSuite, hpke.Suite] = {
    HpkeSuite.X25519_SHA256_CHACHA20POLY1305: hpke.Suite(
        hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305
    ),
    HpkeSuite.MLKEM768X25519_SHA256_CHACHA20POLY1305: hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305
    ),
}

#: Bytes of the encapsulated key that starts every sealed message, by suite.
ENC_LENGTHS: dict[HpkeSuite, int] = {
    HpkeSuite.X25519_SHA256_CHACHA20POLY1305: hpke.KEM.X25519.enc_length(),
    HpkeSuite.MLKEM768X25519_SHA256_CHACHA20POLY1305: hpke.KEM.MLKEM768_X25519.enc_length(),
}

HpkePrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
HpkePublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey

_KEYRING_VERSION = 1


class KeyringError(ValueError):
    """The keyring file cannot be used; the message says why and what to do."""


def hpke_public_key(suite: HpkeSuite, raw: bytes) -> HpkePublicKey:
    """The public key of ``suite`` published as ``raw``; ValueError if it is not one."""
    if suite == HpkeSuite.X25519_SHA256_CHACHA20POLY1305:
        return x25519.X25519PublicKey.from_public_bytes(raw)
    if suite == HpkeSuite.MLKEM768X25519_SHA256_CHACHA20POLY1305:
        if len(raw) != MLKEM768_PUBLIC_BYTES + 32:
            raise ValueError(f"an ML-KEM-768+X25519 public key has 1216 bytes, not {len(raw)}")
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_BYTES]),
            x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_BYTES:]),
        )
    raise ValueError(f"unsupported HPKE suite {suite!s}")


def new_key_id() -> str:
    return "k_" + secrets.token_hex(8)


@dataclass(frozen=True)
class _KeyPair:
    """The private keys registered under one key id."""

    key_id: str
    suite: HpkeSuite
    signing: ed25519.Ed25519PrivateKey
    x25519: x25519.X25519PrivateKey
    mlkem: mlkem.MLKEM768PrivateKey | None  # the hybrid suite only
    created_at: datetime

    @classmethod
    def generate(cls, suite: HpkeSuite, now: datetime) -> _KeyPair:
        if suite not in SUITES:
            raise KeyringError(f"unsupported HPKE suite {suite!s}")
        hybrid = suite == HpkeSuite.MLKEM768X25519_SHA256_CHACHA20POLY1305
        return cls(
            key_id=new_key_id(),
            suite=suite,
            signing=ed25519.Ed25519PrivateKey.generate(),
            x25519=x25519.X25519PrivateKey.generate(),
            mlkem=mlkem.MLKEM768PrivateKey.generate() if hybrid else None,
            created_at=now,
        )

    @property
    def hpke_private_key(self) -> HpkePrivateKey:
        if self.mlkem is None:
            return self.x25519
        return hpke.MLKEM768X25519PrivateKey(self.mlkem, self.x25519)

    @property
    def hpke_public_bytes(self) -> bytes:
        x25519_public = self.x25519.public_key().public_bytes_raw()
        if self.mlkem is None:
            return x25519_public
        return self.mlkem.public_key().public_bytes_raw() + x25519_public

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "suite": self.suite.value,
            "signing_private_key": _b64(self.signing.private_bytes_raw()),
            "x25519_private_key": _b64(self.x25519.private_bytes_raw()),
            "mlkem768_seed": None if self.mlkem is None else _b64(self.mlkem.private_bytes_raw()),
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _KeyPair:
        seed = data["mlkem768_seed"]
        return cls(
            key_id=data["key_id"],
            suite=HpkeSuite(data["suite"]),
            signing=ed25519.Ed25519PrivateKey.from_private_bytes(
                _unb64(data["signing_private_key"])
            ),
            x25519=x25519.X25519PrivateKey.from_private_bytes(_unb64(data["x25519_private_key"])),
            mlkem=None if seed is None else mlkem.MLKEM768PrivateKey.from_seed_bytes(_unb64(seed)),
            created_at=_utc(data["created_at"]),
        )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without a time zone: {text!r}")
    return moment.astimezone(UTC)


class AgentIdentity:
    """One agent's keys: the current key id's, and older ones kept for their grace period."""

    def __init__(self, path: Path, agent_name: str, keys: list[_KeyPair]) -> None:
        self.path = path
        self.agent_name = agent_name
        self._keys = keys  # oldest first; the last one is current

    @classmethod
    def load_or_create(
        cls,
        path: Path,
        agent_name: str,
        suite: HpkeSuite = HpkeSuite.X25519_SHA256_CHACHA20POLY1305,
    ) -> AgentIdentity:
        """The agent's keyring at ``path``, made (with new keys of ``suite``) if missing.

        Raises KeyringError if the file is readable by others, damaged, another
        agent's, or holds keys of another suite.
        """
        if not path.exists():
            identity = cls(path, agent_name, [_KeyPair.generate(suite, datetime.now(UTC))])
            if identity._save(replacing=False):
                return identity
            # Another process of the agent made it first: use its keys, not ours.
        identity = cls._load(path)
        if identity.agent_name != agent_name:
            raise KeyringError(
                f"{path} is the keyring of {identity.agent_name!r}, not {agent_name!r}"
            )
        if identity.suite != suite:
            raise KeyringError(
                f"{path} holds {identity.suite!s} keys, not {suite!s}; rotate to change suites"
            )
        return identity

    @classmethod
    def _load(cls, path: Path) -> AgentIdentity:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyringError(
                f"{path} is readable or writable by others (mode {mode:04o}): its keys may have "
                "leaked; rotate them, or chmod 600 the file if it was never exposed"
            )
        try:
            data = json.loads(path.read_text())
            if data["version"] != _KEYRING_VERSION:
                raise ValueError(f"version {data['version']!r} is not {_KEYRING_VERSION}")
            agent_name = data["agent_name"]
            keys = [_KeyPair.from_json(key) for key in data["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{path} is not a readable keyring: {exc!r}") from None
        if not keys:
            raise KeyringError(f"{path} holds no keys")
        return cls(path, agent_name, keys)

    def _save(self, *, replacing: bool = True) -> bool:
        """Write the keyring atomically: a crash leaves the old file or the new one.
        Unless ``replacing``, an existing file is kept and False returned."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps(
            {
                "version": _KEYRING_VERSION,
                "agent_name": self.agent_name,
                "keys": [key.to_json() for key in self._keys],
            },
            indent=2,
        )
        scratch = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            if replacing:
                os.replace(scratch, self.path)
                return True
            try:
                os.link(scratch, self.path)  # fails if the file exists, unlike a rename
            except FileExistsError:
                return False
            return True
        finally:
            scratch.unlink(missing_ok=True)

    @property
    def _current(self) -> _KeyPair:
        return self._keys[-1]

    @property
    def key_id(self) -> str:
        return self._current.key_id

    @property
    def suite(self) -> HpkeSuite:
        return self._current.suite

    @property
    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        return self._current.signing

    @property
    def hpke_key(self) -> HpkePrivateKey:
        return self._current.hpke_private_key

    def hpke_private_key(self, key_id: str) -> HpkePrivateKey | None:
        """The HPKE private key registered as ``key_id``, current or rotated out; None if
        this agent never had that key id."""
        found = self._pair(key_id)
        return None if found is None else found.hpke_private_key

    def key_suite(self, key_id: str) -> HpkeSuite | None:
        """The HPKE suite of the key ``key_id``; None if this agent never had it."""
        found = self._pair(key_id)
        return None if found is None else found.suite

    def _pair(self, key_id: str) -> _KeyPair | None:
        return next((key for key in self._keys if key.key_id == key_id), None)

    def rotate(self, suite: HpkeSuite | None = None) -> str:
        """Make and store new keys (of ``suite``, default the current one) under a new
        key id, which is returned; the old keys are kept to open boxes sealed to them
        before the rotation reached their senders."""
        fresh = _KeyPair.generate(self.suite if suite is None else suite, datetime.now(UTC))
        self._keys = [*self._keys, fresh]
        self._save()
        return fresh.key_id

    def registration(self, grace: timedelta) -> dict[str, Any]:
        """The ``agent.registered`` data publishing the current keys; after a rotation
        it names the previous key, valid until ``grace`` after the rotation (so
        publishing it again gives the same event data). Receivers follow what the
        directory then says: the previous key opens boxes until that time."""
        current = self._current
        data: dict[str, Any] = {
            "agent_name": self.agent_name,
            "key_id": current.key_id,
            "signing_public_key": current.signing.public_key().public_bytes_raw(),
            "hpke_public_key": current.hpke_public_bytes,
            "suite": current.suite.value,
        }
        if len(self._keys) > 1:
            data["previous_key_id"] = self._keys[-2].key_id
            data["previous_key_valid_until"] = current.created_at + grace
        return data
