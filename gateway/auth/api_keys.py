"""API keys: ``lb_<key_id>_<secret>``, of which only a hash of the secret is kept.

The secret has 256 bits of entropy, so a single SHA-256 is as good as a slow
password hash here and costs microseconds per request. The key id is public
(it names the key in listings and logs); the secret is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from gateway.auth.principal import CredentialKind, Principal
from gateway.auth.rbac import ROLE_PERMISSIONS, Permission, Role

PREFIX = "lb"
_KEY_ID_BYTES = 6  # 12 hex digits


class InvalidKeyRequest(ValueError):
    """A key cannot be created as asked (unknown role, scope outside the role...)."""


class KeyRejected(LookupError):
    """The presented key is malformed, unknown, revoked or expired (the reason says which)."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    tenant_id: str
    role: Role
    scopes: frozenset[Permission] | None
    tier: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def as_json(self) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "tenant_id": self.tenant_id,
            "role": self.role.value,
            "scopes": sorted(self.scopes) if self.scopes is not None else None,
            "tier": self.tier,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    #: The full ``lb_<key_id>_<secret>``; never stored, never shown again.
    token: str


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_token(token: str) -> tuple[str, str]:
    """``(key_id, secret)`` of a well-formed key, else `KeyRejected`."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise KeyRejected("malformed API key")
    return parts[1], parts[2]


def _parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise InvalidKeyRequest(f"unknown role {role!r}; choose one of {choices}") from None


def _parse_scopes(role: Role, scopes: Iterable[str] | None) -> frozenset[Permission] | None:
    if scopes is None:
        return None
    parsed = set()
    for scope in scopes:
        try:
            parsed.add(Permission(scope))
        except ValueError:
            known = ", ".join(p.value for p in Permission)
            raise InvalidKeyRequest(f"unknown scope {scope!r}; known: {known}") from None
    beyond = parsed - ROLE_PERMISSIONS[role]
    if beyond:
        raise InvalidKeyRequest(
            f"role {role.value} does not grant {', '.join(sorted(beyond))}; "
            "scopes can only narrow a role"
        )
    return frozenset(parsed)


def _key(row: asyncpg.Record) -> ApiKey:
    scopes = row["scopes"]
    return ApiKey(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        role=Role(row["role"]),
        scopes=frozenset(Permission(s) for s in scopes) if scopes is not None else None,
        tier=row["tier"],
        name=row["name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


_COLUMNS = "key_id, tenant_id, role, scopes, tier, name, created_at, expires_at, revoked_at"


class ApiKeyStore:
    """API keys in PostgreSQL, so every gateway process sees a revocation at once."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self,
        *,
        tenant_id: str,
        role: str,
        tier: str,
        scopes: Iterable[str] | None = None,
        name: str = "",
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> CreatedKey:
        if not tenant_id.strip():
            raise InvalidKeyRequest("tenant must not be empty")
        parsed_role = _parse_role(role)
        parsed_scopes = _parse_scopes(parsed_role, scopes)
        created_at = now or datetime.now(UTC)
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidKeyRequest("expires_at needs a timezone, e.g. 2030-01-01T00:00:00Z")
            if expires_at <= created_at:
                raise InvalidKeyRequest("expires_at is in the past")
        key_id = secrets.token_hex(_KEY_ID_BYTES)
        secret = secrets.token_urlsafe(32)
        row = await self.pool.fetchrow(
            f"INSERT INTO api_keys (key_id, tenant_id, role, scopes, tier, name, "
            f"secret_sha256, created_at, expires_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) "
            f"RETURNING {_COLUMNS}",
            key_id,
            tenant_id,
            parsed_role.value,
            sorted(parsed_scopes) if parsed_scopes is not None else None,
            tier,
            name,
            _digest(secret),
            created_at,
            expires_at,
        )
        assert row is not None  # INSERT ... RETURNING always returns the row
        return CreatedKey(_key(row), f"{PREFIX}_{key_id}_{secret}")

    async def list(self, tenant_id: str) -> list[ApiKey]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id",
            tenant_id,
        )
        return [_key(row) for row in rows]

    async def get(self, tenant_id: str, key_id: str) -> ApiKey | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND key_id = $2",
            tenant_id,
            key_id,
        )
        return _key(row) if row else None

    async def revoke(self, tenant_id: str, key_id: str, now: datetime | None = None) -> bool:
        """Revoke a key of this tenant; False when the tenant has no such key."""
        result = await self.pool.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3) "
            "WHERE tenant_id = $1 AND key_id = $2",
            tenant_id,
            key_id,
            now or datetime.now(UTC),
        )
        return result != "UPDATE 0"

    async def any_for(self, tenant_id: str) -> bool:
        return bool(
            await self.pool.fetchval("SELECT 1 FROM api_keys WHERE tenant_id = $1", tenant_id)
        )

    async def authenticate(self, token: str, now: datetime | None = None) -> Principal:
        key_id, secret = split_token(token)
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS}, secret_sha256 FROM api_keys WHERE key_id = $1", key_id
        )
        if row is None or not hmac.compare_digest(row["secret_sha256"], _digest(secret)):
            raise KeyRejected("unknown API key")
        key = _key(row)
        if key.revoked_at is not None:
            raise KeyRejected("API key revoked")
        if key.expires_at is not None and key.expires_at <= (now or datetime.now(UTC)):
            raise KeyRejected("API key expired")
        return Principal(
            tenant_id=key.tenant_id,
            role=key.role,
            subject=key.key_id,
            kind=CredentialKind.API_KEY,
            key_id=key.key_id,
            tier=key.tier,
            scopes=key.scopes,
        )
