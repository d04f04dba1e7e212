"""API keys over real HTTP: minted, shown once, hashed at rest, revocable, scoped."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from tests.support.gateway import RunningGateway


async def test_admin_creates_lists_and_revokes_a_key(gateway: RunningGateway) -> None:
    admin = await gateway.key("acme", "admin")
    async with gateway.client(admin) as client:
        created = await client.post("/v1/api-keys", json={"role": "viewer", "name": "dash"})
        assert created.status_code == 201, created.text
        body = created.json()
        token = body["api_key"]
        assert token.startswith(f"lb_{body['key_id']}_")
        assert body["tenant_id"] == "acme" and body["role"] == "viewer"

        listed = (await client.get("/v1/api-keys")).json()
        assert body["key_id"] in {key["key_id"] for key in listed}
        assert all("api_key" not in key for key in listed)

        async with gateway.client(token) as viewer:
            assert (await viewer.get("/v1/api-keys")).status_code == 403
            assert (await client.delete(f"/v1/api-keys/{body['key_id']}")).status_code == 204
            revoked = await viewer.get("/v1/api-keys")
            assert revoked.status_code == 401
            assert revoked.json()["detail"] == "API key revoked"


async def test_only_a_hash_of_the_secret_is_stored(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "viewer")
    key_id, secret = token.split("_", 2)[1:]
    row = await gateway.services.pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
    assert row is not None
    assert row["secret_sha256"] == hashlib.sha256(secret.encode()).digest()
    assert secret not in repr(dict(row))


async def test_forbidden_names_the_missing_permission(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    async with gateway.client(token) as client:
        answer = await client.post("/v1/api-keys", json={"role": "viewer"})
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["permission"] == "users:manage"


async def test_bad_key_requests_change_nothing(gateway: RunningGateway) -> None:
    admin = await gateway.key("acme", "admin")
    async with gateway.client(admin) as client:
        before = len((await client.get("/v1/api-keys")).json())
        cases = [
            {"role": "emperor"},
            {"role": "viewer", "scopes": ["budgets:manage"]},
            {"role": "viewer", "tier": "platinum"},
            {"role": "viewer", "expires_at": "2020-01-01T00:00:00Z"},
            {"role": "viewer", "expires_at": "2030-01-01T00:00:00"},
        ]
        for case in cases:
            answer = await client.post("/v1/api-keys", json=case)
            assert answer.status_code == 422, (case, answer.text)
            assert answer.json()["detail"]
        assert len((await client.get("/v1/api-keys")).json()) == before


async def test_expired_and_malformed_keys_are_refused(gateway: RunningGateway) -> None:
    created = await gateway.services.keys.create(
        tenant_id="acme",
        role="admin",
        tier="developer",
        now=datetime.now(UTC) - timedelta(hours=2),
        expires_at=datetime.now(UTC) - timedelta(hours=1),
    )
    for token in (created.token, "lb_nope", "lb_000000000000_wrong", "garbage"):
        async with gateway.client(token) as client:
            answer = await client.get("/v1/api-keys")
        assert answer.status_code == 401, token
        assert answer.headers["www-authenticate"].startswith("Bearer")
    async with gateway.client() as anonymous:
        assert (await anonymous.get("/v1/api-keys")).status_code == 401


async def test_a_tenant_cannot_revoke_another_tenants_key(gateway: RunningGateway) -> None:
    victim = await gateway.key("acme", "viewer")
    attacker = await gateway.key("evil", "admin")
    async with gateway.client(attacker) as client:
        answer = await client.delete(f"/v1/api-keys/{victim.split('_')[1]}")
        assert answer.status_code == 404
        assert all(key["tenant_id"] == "evil" for key in (await client.get("/v1/api-keys")).json())
    async with gateway.client(victim) as client:
        assert (await client.get("/v1/api-keys")).status_code == 403  # still valid, not revoked
