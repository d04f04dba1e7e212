"""JWT bearer tokens and rate limits over real HTTP, against the real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.health import ComponentCheck
from gateway.rate_limits import RateLimiter
from gateway.services import GatewayEndpoints
from gateway.settings import GatewaySettings
from tests.conftest import Isolation, StackUnderTest
from tests.support.cli import run_cli
from tests.support.gateway import RunningGateway, gateway_endpoints, serve_gateway

SECRET = "test-secret-" + "x" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def endpoints_for(
    stack: StackUnderTest, isolation: Isolation, registry_url: str, redis_url: str | None = None
) -> GatewayEndpoints:
    return gateway_endpoints(
        stack,
        registry_url,
        database_url=isolation.database_url,
        topic_prefix=isolation.topic_prefix,
        redis_url=redis_url,
    )


@pytest.fixture
async def jwt_gateway(
    stack: StackUnderTest, isolation: Isolation, registry_url: str, tmp_path: Path
) -> AsyncIterator[RunningGateway]:
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key())), "kid": "r1"},
            {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ED_KEY.public_key())), "kid": "e1"},
        ]
    }
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    settings = GatewaySettings(
        redis_key_prefix=isolation.redis_prefix,
        jwt_secret=SECRET,
        jwt_jwks_file=tmp_path / "jwks.json",
    )
    async with serve_gateway(endpoints_for(stack, isolation, registry_url), settings) as running:
        yield running


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "alice",
        "tenant": "acme",
        "role": "admin",
        "aud": "ledgerbus",
        "exp": now + 300,
        **overrides,
    }


async def status_with(gateway: RunningGateway, token: str) -> int:
    async with gateway.client(token) as client:
        return (await client.get("/v1/api-keys")).status_code


async def test_valid_tokens_of_every_algorithm_are_accepted(jwt_gateway: RunningGateway) -> None:
    tokens = [
        jwt.encode(claims(), SECRET, algorithm="HS256"),
        jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r1"}),
        jwt.encode(claims(), ED_KEY, algorithm="EdDSA", headers={"kid": "e1"}),
    ]
    for token in tokens:
        async with jwt_gateway.client(token) as client:
            answer = await client.get("/v1/api-keys")
        assert answer.status_code == 200, answer.text


async def test_bad_tokens_are_refused_with_401(jwt_gateway: RunningGateway) -> None:
    now = int(time.time())
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "expired": jwt.encode(claims(exp=now - 60), SECRET, algorithm="HS256"),
        "not yet valid": jwt.encode(claims(nbf=now + 600), SECRET, algorithm="HS256"),
        "wrong audience": jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256"),
        "wrong secret": jwt.encode(claims(), "not-the-secret" * 3, algorithm="HS256"),
        "forged rsa": jwt.encode(claims(), other_rsa, algorithm="RS256", headers={"kid": "r1"}),
        "unknown role": jwt.encode(claims(role="emperor"), SECRET, algorithm="HS256"),
        "no tenant": jwt.encode(claims(tenant=""), SECRET, algorithm="HS256"),
        "no exp": jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET),
        "alg none": jwt.encode(claims(), "", algorithm="none"),
        "garbage": "a.b.c",
    }
    for reason, token in bad.items():
        async with jwt_gateway.client(token) as client:
            answer = await client.get("/v1/api-keys")
        assert answer.status_code == 401, reason
        assert answer.json()["status"] == 401


async def test_jwt_role_and_tenant_come_from_the_token(jwt_gateway: RunningGateway) -> None:
    viewer = jwt.encode(claims(role="viewer"), SECRET, algorithm="HS256")
    assert await status_with(jwt_gateway, viewer) == 403
    admin = jwt.encode(claims(tenant="globex"), SECRET, algorithm="HS256")
    await jwt_gateway.key("acme", "viewer")
    async with jwt_gateway.client(admin) as client:
        listed = (await client.get("/v1/api-keys")).json()
    assert listed == []  # acme's key is invisible to a globex token


@pytest.fixture
async def limited_gateway(
    stack: StackUnderTest, isolation: Isolation, registry_url: str
) -> AsyncIterator[RunningGateway]:
    settings = GatewaySettings(
        redis_key_prefix=isolation.redis_prefix,
        rate_limit_tiers={"free": 3, "developer": 5, "enterprise": None},
        rate_limit_tenant_per_hour=8,
    )
    async with serve_gateway(endpoints_for(stack, isolation, registry_url), settings) as running:
        yield running


async def test_a_key_over_its_limit_gets_429_with_retry_after(
    limited_gateway: RunningGateway,
) -> None:
    token = await limited_gateway.key("acme", "admin", tier="free")
    async with limited_gateway.client(token) as client:
        answers = [await client.get("/v1/api-keys") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["ratelimit-remaining"] for a in answers[:3]] == ["2", "1", "0"]
    refused = answers[3]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "3"
    assert refused.json()["bucket"] == "key"


async def test_keys_have_their_own_buckets_and_the_tenant_caps_the_sum(
    limited_gateway: RunningGateway,
) -> None:
    first, second, third = [await limited_gateway.key("acme", "admin") for _ in range(3)]
    other_tenant = await limited_gateway.key("globex", "admin")
    codes: dict[str, list[int]] = {}
    for name, token in (("first", first), ("second", second), ("third", third)):
        async with limited_gateway.client(token) as client:
            codes[name] = [(await client.get("/v1/api-keys")).status_code for _ in range(3)]
    # 5 per key would allow all 9; the tenant's 8 per hour stops the ninth.
    assert codes["first"] == [200, 200, 200] and codes["second"] == [200, 200, 200]
    assert codes["third"] == [200, 200, 429]
    async with limited_gateway.client(third) as client:
        assert (await client.get("/v1/api-keys")).json()["bucket"] == "tenant"
    assert await status_with(limited_gateway, other_tenant) == 200  # separate tenant bucket


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_down_fails_open_or_closed_as_set_and_readyz_says_which(
    stack: StackUnderTest, isolation: Isolation, registry_url: str, fail_open: bool
) -> None:
    dead_redis = "redis://127.0.0.1:1"
    settings = GatewaySettings(
        redis_key_prefix=isolation.redis_prefix, rate_limit_fail_open=fail_open
    )
    endpoints = endpoints_for(stack, isolation, registry_url, redis_url=dead_redis)
    limiter = RateLimiter(dead_redis, settings)
    check = ComponentCheck("redis", dead_redis, limiter.probe, required=not fail_open)
    async with serve_gateway(endpoints, settings, checks=[check]) as running:
        token = await running.key("acme", "admin")
        assert await status_with(running, token) == (200 if fail_open else 503)
        async with running.client() as client:
            ready = await client.get("/readyz")
    assert ready.status_code == (200 if fail_open else 503)
    redis = ready.json()["components"]["redis"]
    assert redis["status"] == "down" and redis["required"] is (not fail_open)


async def test_keys_cli_creates_a_key_the_gateway_accepts(
    gateway: RunningGateway, cli_env: dict[str, str], isolation: Isolation
) -> None:
    env = {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}
    made = await run_cli(
        ["keys", "create", "--tenant", "acme", "--role", "manager", "--scopes", "budgets:manage"],
        env,
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["scopes"] == ["budgets:manage"]
    assert await status_with(gateway, created["api_key"]) == 403  # manager: no users:manage

    listed = await run_cli(["keys", "list", "--tenant", "acme"], env)
    assert created["key_id"] in listed.stdout and created["api_key"] not in listed.stdout

    refused = await run_cli(
        ["keys", "create", "--tenant", "acme", "--role", "viewer", "--scopes", "budgets:manage"],
        env,
    )
    assert refused.returncode == 2
    assert "does not grant budgets:manage" in refused.stderr

    revoked = await run_cli(["keys", "revoke", "--tenant", "acme", created["key_id"]], env)
    assert revoked.returncode == 0, revoked.stderr
    assert await status_with(gateway, created["api_key"]) == 401
