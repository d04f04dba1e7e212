"""JWT bearer tokens, verified with PyJWT.

HS256 needs ``LEDGERBUS_JWT_SECRET``; RS256/ES256/EdDSA need a PEM public key
or a JWKS file (the token's ``kid`` picks the key). Tokens must carry ``sub``,
``tenant``, ``role`` and ``exp``, and the configured audience.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jwt

from gateway.auth.principal import CredentialKind, Principal
from gateway.auth.rbac import Role
from gateway.settings import GatewaySettings

_ASYMMETRIC = ["RS256", "ES256", "EdDSA"]


class TokenRejected(ValueError):
    """The token is malformed, badly signed, expired, not yet valid or for someone else."""


@dataclass
class TokenVerifier:
    settings: GatewaySettings
    _keys: dict[str | None, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        if settings.jwt_public_key_file is not None:
            self._keys[None] = settings.jwt_public_key_file.read_text()
        if settings.jwt_jwks_file is not None:
            for key in jwt.PyJWKSet.from_json(settings.jwt_jwks_file.read_text()).keys:
                self._keys[key.key_id] = key.key

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self.settings.jwt_secret is not None

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"malformed token: {exc}") from None
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.settings.jwt_secret is not None:
            return self.settings.jwt_secret.get_secret_value(), ["HS256"]
        if algorithm in _ASYMMETRIC:
            kid = header.get("kid")
            key = self._keys.get(kid) if kid is not None else None
            key = key if key is not None else self._keys.get(None)
            if key is not None:
                return key, [algorithm]
        raise TokenRejected(f"no verification key for a {algorithm} token")

    def verify(self, token: str) -> Principal:
        if not self.enabled:
            raise TokenRejected("JWT authentication is not configured")
        key, algorithms = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(str(exc)) from None
        tenant, role = claims.get("tenant"), claims.get("role")
        if not isinstance(tenant, str) or not tenant:
            raise TokenRejected("token has no tenant claim")
        try:
            parsed_role = Role(str(role))
        except ValueError:
            raise TokenRejected(f"token role {role!r} is not a known role") from None
        tier = claims.get("tier")
        return Principal(
            tenant_id=tenant,
            role=parsed_role,
            subject=str(claims["sub"]),
            kind=CredentialKind.JWT,
            key_id=f"jwt:{claims['sub']}",
            tier=tier if isinstance(tier, str) else self.settings.rate_limit_default_tier,
        )
