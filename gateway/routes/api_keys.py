"""``/v1/api-keys``: an admin mints, lists and revokes its tenant's keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import AwareDatetime, BaseModel, Field

from gateway.auth.api_keys import InvalidKeyRequest
from gateway.auth.dependencies import require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission, Role
from gateway.problems import Problem, problem_responses
from gateway.services import Services

Admin = Annotated[Principal, Depends(require(Permission.USERS_MANAGE))]


class NewApiKey(BaseModel):
    role: Role
    scopes: list[Permission] | None = Field(
        None, description="Narrow the role to these permissions; omitted = all of the role's"
    )
    tier: str | None = Field(None, description="Rate-limit tier; omitted = the default tier")
    name: str = Field("", max_length=200)
    expires_at: AwareDatetime | None = None


class ApiKeyView(BaseModel):
    key_id: str
    tenant_id: str
    role: Role
    scopes: list[str] | None
    tier: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class CreatedApiKey(ApiKeyView):
    api_key: str = Field(description="The key itself: shown only in this response")


def api_keys_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1/api-keys", tags=["api keys"], responses=problem_responses(401, 403, 429)
    )

    @router.post("", status_code=201, responses=problem_responses(422))
    async def create_key(
        body: NewApiKey,
        principal: Admin,
        services: Services,
    ) -> CreatedApiKey:
        """Mint a key for the caller's tenant; the response is the only time it is shown."""
        tier = body.tier or services.settings.rate_limit_default_tier
        if tier not in services.settings.rate_limit_tiers:
            known = ", ".join(sorted(services.settings.rate_limit_tiers))
            raise Problem(422, f"unknown tier {tier!r}; known: {known}")
        try:
            created = await services.keys.create(
                tenant_id=principal.tenant_id,
                role=body.role.value,
                tier=tier,
                scopes=[scope.value for scope in body.scopes] if body.scopes is not None else None,
                name=body.name,
                expires_at=body.expires_at,
            )
        except InvalidKeyRequest as exc:
            raise Problem(422, str(exc)) from None
        view: dict[str, Any] = created.key.as_json()
        return CreatedApiKey(**view, api_key=created.token)

    @router.get("")
    async def list_keys(
        principal: Admin,
        services: Services,
    ) -> list[ApiKeyView]:
        """The tenant's keys, revoked ones included; secrets are never shown."""
        keys = await services.keys.list(principal.tenant_id)
        return [ApiKeyView(**key.as_json()) for key in keys]

    @router.delete("/{key_id}", status_code=204, responses=problem_responses(404))
    async def revoke_key(
        key_id: str,
        principal: Admin,
        services: Services,
    ) -> Response:
        """Revoke at once, in every gateway process (keys are checked in PostgreSQL)."""
        if not await services.keys.revoke(principal.tenant_id, key_id):
            raise Problem(404, f"no API key {key_id!r} in this tenant")
        return Response(status_code=204)

    return router
