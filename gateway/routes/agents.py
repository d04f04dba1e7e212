"""``/v1/agents``: the tenant's agent directory, and registering an agent's public keys.

Registering publishes ``agent.registered``; the ``agent_directory`` projection
(``streams.agent_directory``) folds it in from the archive, so a new agent
shows in ``GET`` a moment after the 202. Registering binds a name to the keys
that others will trust for it, an identity act like minting an API key, so it
needs ``users:manage`` (admins); reading needs ``events:read``.

Keys are checked before anything is published: the Ed25519 signing key must
be a point of the curve, the X25519 key must not be of low order (an HPKE
exchange with it would give an all-zero secret). Each may be sent as base64
(standard or URL-safe) of the raw bytes, or as a PEM public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Self
from urllib.parse import quote

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from gateway.auth.dependencies import require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.problems import Problem, problem_responses
from gateway.projected import projection_router
from gateway.services import Services
from producers.publisher import build_event
from schemas.models.enums import HpkeSuite
from streams.agent_directory import (
    Agent,
    AgentDirectory,
    AgentKey,
    agent_key,
    get_agent,
    list_agents,
)
from streams.approvals import MAX_PAGE

Reader = Annotated[Principal, Depends(require(Permission.EVENTS_READ))]
Admin = Annotated[Principal, Depends(require(Permission.USERS_MANAGE))]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
AgentName = Annotated[str, Field(min_length=1, max_length=100, pattern=_NAME_PATTERN)]
KeyId = Annotated[str, Field(min_length=1, max_length=100, pattern=_NAME_PATTERN)]

_ED25519_P = 2**255 - 19
_ED25519_D = -121665 * pow(121666, -1, _ED25519_P) % _ED25519_P
_MLKEM768_PUBLIC_BYTES = 1184


def on_ed25519_curve(raw: bytes) -> bool:
    """Whether 32 bytes decode to a point of Ed25519 (RFC 8032, 5.1.3); OpenSSL
    loads any 32 bytes and only fails later, at every verification."""
    p = _ED25519_P
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= p:
        return False
    x2 = (y * y - 1) * pow(_ED25519_D * y * y + 1, -1, p) % p
    if x2 == 0:
        return not raw[31] >> 7  # x = 0 has no negative twin
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p:
        x = x * pow(2, (p - 1) // 4, p) % p
    return (x * x - x2) % p == 0


def _raw(value: object, pem_type: type[Any] | None, what: str) -> bytes:
    """The raw public key bytes in base64 text, or in a PEM of ``pem_type`` (None: no PEM)."""
    if not isinstance(value, str):
        raise ValueError(f"the {what} public key must be a string (base64 or PEM)")
    text = value.strip()
    if text.startswith("-----BEGIN"):
        if pem_type is None:
            raise ValueError(f"an {what} public key has no PEM form; send base64")
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a readable PEM public key: {exc}") from None
        if not isinstance(key, pem_type):
            raise ValueError(f"the PEM holds a {type(key).__name__}, not an {what} public key")
        raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw
    standard = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"the {what} public key is neither base64 nor PEM") from None


def _x25519(raw: bytes) -> None:
    if len(raw) != 32:
        raise ValueError(f"an X25519 public key has 32 bytes, not {len(raw)}")
    try:
        x25519.X25519PrivateKey.generate().exchange(x25519.X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise ValueError("the X25519 public key is a low-order point") from None


def signing_key(value: object) -> bytes:
    raw = _raw(value, ed25519.Ed25519PublicKey, "Ed25519")
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    if not on_ed25519_curve(raw):
        raise ValueError("the Ed25519 public key is not a point of the curve")
    return raw


def hpke_key(value: object, info: ValidationInfo) -> bytes:
    """The HPKE public key of the request's suite: X25519, or ML-KEM-768 then
    X25519 concatenated (the hybrid suite, base64 only: it has no PEM form)."""
    suite = info.data.get("suite")
    if suite is None:
        return b""  # the suite itself is invalid, which is reported
    if suite == HpkeSuite.X25519_SHA256_CHACHA20POLY1305:
        raw = _raw(value, x25519.X25519PublicKey, "X25519")
        _x25519(raw)
        return raw
    raw = _raw(value, None, "ML-KEM-768+X25519")
    if len(raw) != _MLKEM768_PUBLIC_BYTES + 32:
        raise ValueError(f"an ML-KEM-768+X25519 public key has 1216 bytes, not {len(raw)}")
    try:
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_BYTES])
    except ValueError:
        raise ValueError("the ML-KEM-768 part is not a valid public key") from None
    _x25519(raw[_MLKEM768_PUBLIC_BYTES:])
    return raw


def known_suite(value: object) -> object:
    if value == HpkeSuite.UNKNOWN:
        raise ValueError("the suite must be a known HPKE suite")
    return value


def fingerprint(signing: bytes, hpke: bytes) -> str:
    """A key id derived from the keys: the same keys registered again get the same id."""
    return "k-" + hashlib.sha256(signing + hpke).hexdigest()[:16]


_KEY_TEXT = WithJsonSchema({"type": "string", "description": "base64 of the raw key, or PEM"})


class NewAgent(BaseModel):
    """The ``agent.registered`` payload; keys as base64 or PEM text."""

    model_config = ConfigDict(extra="forbid")

    agent_name: AgentName
    key_id: KeyId | None = Field(None, description="Omitted: derived from the keys")
    signing_public_key: Annotated[bytes, BeforeValidator(signing_key), _KEY_TEXT]
    suite: Annotated[HpkeSuite, BeforeValidator(known_suite)] = (
        HpkeSuite.X25519_SHA256_CHACHA20POLY1305
    )
    hpke_public_key: Annotated[bytes, BeforeValidator(hpke_key), _KEY_TEXT]
    role: str | None = Field(None, max_length=200, pattern=r"^[^\x00-\x1f]*$")
    previous_key_id: KeyId | None = Field(None, description="The key id this one rotates out")
    previous_key_valid_until: AwareDatetime | None = Field(
        None, description="End of the previous key's grace period; null = ends now"
    )
    revoked_key_ids: list[KeyId] = Field(default_factory=list, max_length=100)

    @property
    def chosen_key_id(self) -> str:
        return self.key_id or fingerprint(self.signing_public_key, self.hpke_public_key)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        key_id = self.chosen_key_id
        if self.previous_key_id == key_id:
            raise ValueError("previous_key_id names the key being registered")
        if key_id in self.revoked_key_ids:
            raise ValueError("revoked_key_ids names the key being registered")
        if self.previous_key_valid_until is not None and self.previous_key_id is None:
            raise ValueError("previous_key_valid_until needs previous_key_id")
        return self


class KeyView(BaseModel):
    key_id: str
    signing_public_key: str = Field(description="base64 of the raw Ed25519 public key")
    hpke_public_key: str = Field(description="base64 of the raw HPKE public key")
    suite: str
    state: str = Field(description="current, grace, retired or revoked, at the time of the request")
    registered_at: datetime
    retired_at: datetime | None = Field(description="End of the grace period after a rotation")
    revoked_at: datetime | None


class InstanceView(BaseModel):
    instance_id: str
    key_id: str
    status: str
    active_runs: int
    last_heartbeat_at: datetime


class AgentView(BaseModel):
    agent_name: str
    role: str | None
    current_key_id: str
    registered_at: datetime
    updated_at: datetime
    status: str = Field(description="Latest heartbeat's status, or offline when silent")
    last_heartbeat_at: datetime | None
    keys: list[KeyView]
    instances: list[InstanceView]


class AgentPage(BaseModel):
    items: list[AgentView]
    next_after: str | None = Field(description="Pass as `after` for the next page; null at the end")


class AgentRegistration(BaseModel):
    """``agent.registered`` is published; ``href`` shows the agent once it is projected."""

    agent_name: str
    key_id: str
    event_id: str
    href: str


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key_view(key: AgentKey, current_key_id: str, at: datetime) -> KeyView:
    return KeyView(
        key_id=key.key_id,
        signing_public_key=_b64(key.signing_public_key),
        hpke_public_key=_b64(key.hpke_public_key),
        suite=key.suite,
        state=key.state(current_key_id, at),
        registered_at=key.registered_at,
        retired_at=key.retired_at,
        revoked_at=key.revoked_at,
    )


def _view(agent: Agent, at: datetime) -> AgentView:
    return AgentView(
        agent_name=agent.agent_name,
        role=agent.role,
        current_key_id=agent.current_key_id,
        registered_at=agent.registered_at,
        updated_at=agent.updated_at,
        status=agent.status(at),
        last_heartbeat_at=agent.last_heartbeat_at,
        keys=[_key_view(key, agent.current_key_id, at) for key in agent.keys],
        instances=[InstanceView.model_validate(i, from_attributes=True) for i in agent.instances],
    )


def agents_router() -> APIRouter:
    router = projection_router("agents", AgentDirectory())

    @router.get("", responses=problem_responses(422))
    async def list_all(
        principal: Reader,
        services: Services,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        after: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$")] = None,
    ) -> AgentPage:
        """The tenant's agents in name order, with their keys and processes."""
        found = await list_agents(services.pool, principal.tenant_id, limit=limit, after=after)
        now = datetime.now(UTC)
        return AgentPage(
            items=[_view(agent, now) for agent in found],
            next_after=found[-1].agent_name if len(found) == limit else None,
        )

    @router.get("/{agent_name}", responses=problem_responses(404, 422))
    async def get_one(
        agent_name: Annotated[str, Path(max_length=100, pattern=_NAME_PATTERN)],
        principal: Reader,
        services: Services,
    ) -> AgentView:
        agent = await get_agent(services.pool, principal.tenant_id, agent_name)
        if agent is None:
            raise Problem(404, f"no agent {agent_name!r} in this tenant")
        return _view(agent, datetime.now(UTC))

    @router.post(
        "",
        status_code=202,
        response_model=AgentRegistration,
        responses=problem_responses(409, 422),
    )
    async def register(body: NewAgent, principal: Admin, services: Services) -> Response:
        """Publish the agent's public keys; registering the same keys again is harmless,
        other keys under a key id already in use are a conflict (409)."""
        tenant, key_id = principal.tenant_id, body.chosen_key_id
        bound = await agent_key(services.pool, tenant, body.agent_name, key_id)
        if bound is not None and (
            bound.signing_public_key,
            bound.hpke_public_key,
            bound.suite,
        ) != (body.signing_public_key, body.hpke_public_key, body.suite.value):
            raise Problem(409, f"key id {key_id!r} of {body.agent_name!r} is bound to other keys")
        event = build_event(
            services.catalog.get("agent.registered"),
            subject=body.agent_name,
            tenant_id=tenant,
            data={**body.model_dump(), "key_id": key_id},
            source="gateway",
        )
        await services.publisher.publish(event)
        href = f"/v1/agents/{quote(body.agent_name, safe='')}"
        registration = AgentRegistration(
            agent_name=body.agent_name, key_id=key_id, event_id=str(event.id), href=href
        )
        return JSONResponse(registration.model_dump(), status_code=202, headers={"Location": href})

    return router
