"""Walks every operation in the OpenAPI document, so no endpoint can skip auth.

Each ``/v1`` operation is called with no credential, a malformed key, an
unknown key, a revoked key, an expired JWT and a badly signed JWT (all → 401),
then as each role: a role lacking the endpoint's permission gets 403 naming a
permission that role really lacks, and admin is never refused.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from gateway.auth.rbac import ROLE_PERMISSIONS, Role
from gateway.settings import GatewaySettings
from tests.conftest import Isolation, StackUnderTest
from tests.support.gateway import RunningGateway, gateway_endpoints, serve_gateway

SECRET = "walk-secret-" + "y" * 32
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
async def walked(
    stack: StackUnderTest, isolation: Isolation, registry_url: str
) -> AsyncIterator[RunningGateway]:
    endpoints = gateway_endpoints(
        stack,
        registry_url,
        database_url=isolation.database_url,
        topic_prefix=isolation.topic_prefix,
    )
    settings = GatewaySettings(
        redis_key_prefix=isolation.redis_prefix,
        jwt_secret=SECRET,
        approval_wait_seconds=0.1,
        rate_limit_tiers={"developer": None},
        rate_limit_tenant_per_hour=None,
    )
    async with serve_gateway(endpoints, settings) as running:
        yield running


def operations(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path, item in openapi["paths"].items():
        if path.startswith("/v1/"):
            found.extend((method, path) for method in METHODS if method in item)
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "no-such-id", path)


async def call(
    gateway: RunningGateway, token: str | None, method: str, path: str
) -> tuple[int, Any]:
    """Status (and problem body for 401/403) without waiting for streams to end."""
    async with gateway.client(token) as client:
        body: dict[str, Any] | None = {} if method in ("post", "put", "patch") else None
        async with client.stream(method.upper(), concrete(path), json=body) as answer:
            if answer.status_code in (401, 403):
                await answer.aread()
                return answer.status_code, answer.json()
            return answer.status_code, None


async def test_every_operation_requires_a_valid_credential_and_the_right_role(
    walked: RunningGateway,
) -> None:
    async with walked.client() as client:
        openapi = (await client.get("/openapi.json")).json()
    ops = operations(openapi)
    assert ("post", "/v1/api-keys") in ops  # the walk sees the API

    revoked = await walked.key("acme", "admin")
    await walked.services.keys.revoke("acme", revoked.split("_")[1])
    now = int(time.time())
    expired = jwt.encode(
        {"sub": "a", "tenant": "acme", "role": "admin", "aud": "ledgerbus", "exp": now - 60},
        SECRET,
    )
    forged = jwt.encode(
        {"sub": "a", "tenant": "acme", "role": "admin", "aud": "ledgerbus", "exp": now + 600},
        "some-other-secret-that-is-long-enough",
    )
    bad_credentials = {
        "none": None,
        "malformed": "lb_broken",
        "unknown": "lb_000000000000_" + "z" * 43,
        "revoked": revoked,
        "expired jwt": expired,
        "forged jwt": forged,
    }
    keys = {role: await walked.key("acme", role.value) for role in Role}

    failures = []
    for method, path in ops:
        documented = openapi["paths"][path][method]["responses"]
        if not {"401", "403"} <= documented.keys():
            failures.append(f"{method} {path}: 401/403 not documented")
        for label, token in bad_credentials.items():
            status, _ = await call(walked, token, method, path)
            if status != 401:
                failures.append(f"{method} {path} with {label} credential: {status}")
        for role, token in keys.items():
            status, body = await call(walked, token, method, path)
            if status == 401:
                failures.append(f"{method} {path} as {role}: 401 with a valid key")
            elif status == 403:
                missing = body.get("permission")
                if role is Role.ADMIN or missing in ROLE_PERMISSIONS[role]:
                    failures.append(f"{method} {path} as {role}: 403 for {missing!r}")
    assert failures == []
