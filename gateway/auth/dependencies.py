"""FastAPI dependencies that turn a bearer credential into a checked `Principal`.

Order: authenticate (401), count against the rate limits (429, or 503 when
Redis is down and the gateway fails closed), then check the permission (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from prometheus_client import Counter

from gateway.auth.api_keys import PREFIX, KeyRejected
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.auth.tokens import TokenRejected
from gateway.problems import Problem
from gateway.rate_limits import RateLimitUnavailable
from gateway.services import GatewayServices, Services

AUTH_FAILURES = Counter(
    "ledgerbus_auth_failures_total", "Requests refused with 401 or 403", ["reason"]
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ledgerbus"'}


def _unauthorized(reason: str, detail: str) -> Problem:
    AUTH_FAILURES.labels(reason).inc()
    return Problem(401, detail, headers=_CHALLENGE)


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise _unauthorized("missing", "no credential: send Authorization: Bearer <key or JWT>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("malformed", "Authorization must be 'Bearer <key or JWT>'")
    return token.strip()


async def principal_for(services: GatewayServices, token: str) -> Principal:
    """The caller a bearer token stands for, or a 401 `Problem` saying why not."""
    try:
        if token.startswith(f"{PREFIX}_"):
            return await services.keys.authenticate(token)
        return services.tokens.verify(token)
    except KeyRejected as exc:
        raise _unauthorized("api_key", str(exc)) from None
    except TokenRejected as exc:
        raise _unauthorized("jwt", f"invalid token: {exc}") from None


async def authenticate(request: Request, services: Services) -> Principal:
    principal = await principal_for(services, bearer_token(request.headers.get("authorization")))
    request.state.principal = principal  # for the request log
    return principal


async def admit(
    services: GatewayServices, principal: Principal, permission: Permission
) -> dict[str, str]:
    """Rate-limit then authorise; returns the ``RateLimit-*`` headers to send."""
    try:
        decision = await services.limiter.check(principal)
    except RateLimitUnavailable as exc:
        raise Problem(503, str(exc)) from None
    headers = decision.headers()
    if not decision.allowed:
        raise Problem(
            429,
            f"rate limit of the {decision.bucket} exceeded ({decision.limit} requests/hour)",
            headers=headers,
            bucket=decision.bucket,
        )
    if not principal.can(permission):
        AUTH_FAILURES.labels("forbidden").inc()
        raise Problem(
            403,
            f"role {principal.role.value} lacks permission {permission.value}",
            permission=permission.value,
        )
    return headers


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency giving the authenticated caller, if it may use ``permission``."""

    async def dependency(
        response: Response,
        principal: Annotated[Principal, Depends(authenticate)],
        services: Services,
    ) -> Principal:
        response.headers.update(await admit(services, principal, permission))
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the auth-walk test
    return dependency
