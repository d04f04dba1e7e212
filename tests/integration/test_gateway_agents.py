"""The agent directory over real HTTP, projected from the real archive."""

from __future__ import annotations

import base64
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, rsa, x25519

from event_store.projections import ProjectedEvent
from producers.publisher import build_event
from schemas.models import Envelope
from streams.agent_directory import AgentDirectory, KeyState, get_agent
from streams.runs import RunsProjection
from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.cli import run_cli
from tests.support.gateway_deployment import (
    Deployment,
    caught_up,
    dump_projection,
    open_deployment,
)
from tests.support.pipeline import CATALOG

RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
PEM = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
HYBRID = "mlkem768x25519_sha256_chacha20poly1305"


@pytest.fixture(scope="module")
async def deployment(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    log_dir = tmp_path_factory.mktemp("gateway-agents")
    async with open_deployment(stack, registry_url, log_dir) as running:
        yield running


@dataclass(frozen=True)
class KeyPair:
    """An agent's public keys, as raw bytes and as the texts a client may send."""

    signing: bytes
    hpke: bytes
    signing_pem: str
    hpke_pem: str

    @classmethod
    def new(cls) -> KeyPair:
        signing = ed25519.Ed25519PrivateKey.generate().public_key()
        hpke = x25519.X25519PrivateKey.generate().public_key()
        return cls(
            signing.public_bytes(*RAW),
            hpke.public_bytes(*RAW),
            signing.public_bytes(*PEM).decode(),
            hpke.public_bytes(*PEM).decode(),
        )

    def body(self, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "agent_name": name,
            "signing_public_key": b64(self.signing),
            "hpke_public_key": b64(self.hpke),
            **extra,
        }


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def shown(
    client: httpx.AsyncClient, name: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """``GET /v1/agents/{name}`` once the directory shows what ``ready`` wants."""
    found: list[dict[str, Any]] = []

    async def projected() -> bool:
        answer = await client.get(f"/v1/agents/{name}")
        found[:] = [answer.json()] if answer.status_code == 200 else []
        return bool(found) and ready(found[0])

    await eventually(projected, timeout=30, interval=0.1)
    return found[0]


def states(agent: dict[str, Any]) -> dict[str, str]:
    return {key["key_id"]: key["state"] for key in agent["keys"]}


async def test_a_registered_agent_is_listed_with_its_keys(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    keys = KeyPair.new()
    async with deployment.client(tenant, "admin") as client:
        body = keys.body("qa-tester", key_id="qa-1", role="QA Tester")
        answer = await client.post("/v1/agents", json=body)
        assert answer.status_code == 202, answer.text
        assert answer.headers["location"] == answer.json()["href"] == "/v1/agents/qa-tester"
        agent = await shown(client, "qa-tester", lambda agent: True)
        listed = (await client.get("/v1/agents")).json()
    assert listed == {"items": [agent], "next_after": None}
    assert (agent["role"], agent["current_key_id"], agent["status"]) == (
        "QA Tester",
        "qa-1",
        "offline",
    )
    [key] = agent["keys"]
    assert (key["key_id"], key["state"], key["suite"]) == (
        "qa-1",
        "current",
        "x25519_sha256_chacha20poly1305",
    )
    assert base64.b64decode(key["signing_public_key"]) == keys.signing
    assert base64.b64decode(key["hpke_public_key"]) == keys.hpke
    [event] = await deployment.pipeline.archived(tenant, "agent.registered")
    assert (event.subject, event.source, str(event.id)) == (
        "qa-tester",
        "gateway",
        answer.json()["event_id"],
    )


async def test_pem_keys_are_accepted_and_the_key_id_is_derived(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    keys = KeyPair.new()
    body = {
        "agent_name": "developer",
        "signing_public_key": keys.signing_pem,
        "hpke_public_key": keys.hpke_pem,
    }
    async with deployment.client(tenant, "admin") as client:
        first = await client.post("/v1/agents", json=body)
        again = await client.post("/v1/agents", json=keys.body("developer"))
        assert first.status_code == again.status_code == 202, (first.text, again.text)
        key_id = first.json()["key_id"]
        assert again.json()["key_id"] == key_id and key_id.startswith("k-")
        agent = await shown(client, "developer", lambda agent: True)
    [key] = agent["keys"]
    assert key["key_id"] == key_id
    assert base64.b64decode(key["signing_public_key"]) == keys.signing


async def test_the_hybrid_post_quantum_suite_is_accepted(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    keys = KeyPair.new()
    hybrid = mlkem.MLKEM768PrivateKey.generate().public_key().public_bytes_raw() + keys.hpke
    body = keys.body("security-auditor", suite=HYBRID, hpke_public_key=b64(hybrid))
    async with deployment.client(tenant, "admin") as client:
        answer = await client.post("/v1/agents", json=body)
        assert answer.status_code == 202, answer.text
        agent = await shown(client, "security-auditor", lambda agent: True)
    [key] = agent["keys"]
    assert (key["suite"], base64.b64decode(key["hpke_public_key"])) == (HYBRID, hybrid)


async def test_bad_keys_are_refused_and_nothing_is_published(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    keys = KeyPair.new()
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(*PEM)
        .decode()
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"signing_public_key": "not base64!"}, "body.signing_public_key"),
        ({"signing_public_key": b64(keys.signing[:31])}, "body.signing_public_key"),
        ({"signing_public_key": b64(b"\xff" * 32)}, "body.signing_public_key"),  # off the curve
        ({"signing_public_key": keys.hpke_pem}, "body.signing_public_key"),  # wrong key type
        ({"signing_public_key": rsa_pem}, "body.signing_public_key"),
        ({"hpke_public_key": b64(bytes(32))}, "body.hpke_public_key"),  # low order
        ({"hpke_public_key": keys.signing_pem}, "body.hpke_public_key"),
        ({"hpke_public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n"}, "body.hpke_public_key"),
        ({"suite": "unknown"}, "body.suite"),
        ({"suite": HYBRID}, "body.hpke_public_key"),  # an X25519 key alone is too short
        (  # ML-KEM coefficients beyond the modulus
            {"suite": HYBRID, "hpke_public_key": b64(b"\xff" * 1184 + keys.hpke)},
            "body.hpke_public_key",
        ),
        ({"agent_name": "no spaces"}, "body.agent_name"),
        ({"key_id": "k1", "revoked_key_ids": ["k1"]}, "body"),
        ({"previous_key_valid_until": "2030-01-01T00:00:00Z"}, "body"),
        ({"nickname": "x"}, "body.nickname"),
    ]
    async with deployment.client(tenant, "admin") as client:
        for change, path in cases:
            answer = await client.post("/v1/agents", json={**keys.body("auditor"), **change})
            assert answer.status_code == 422, (change, answer.text)
            assert [error["path"] for error in answer.json()["errors"]] == [path], change
    assert await deployment.published("agents", tenant) == []


async def test_registering_needs_users_manage_and_reading_events_read(
    deployment: Deployment,
) -> None:
    tenant = deployment.pipeline.new_tenant()
    body = KeyPair.new().body("devops")
    for role in ("manager", "developer", "viewer"):
        async with deployment.client(tenant, role) as client:
            answer = await client.post("/v1/agents", json=body)
            assert answer.status_code == 403, role
            assert answer.json()["permission"] == "users:manage"
            assert (await client.get("/v1/agents")).status_code == 200
    async with deployment.gateway.client() as anonymous:
        assert (await anonymous.get("/v1/agents")).status_code == 401
    assert await deployment.published("agents", tenant) == []


async def test_another_tenant_does_not_see_the_agents(deployment: Deployment) -> None:
    owner, other = deployment.pipeline.new_tenant(), deployment.pipeline.new_tenant()
    async with deployment.client(owner, "admin") as client:
        registered = await client.post("/v1/agents", json=KeyPair.new().body("secret-agent"))
        assert registered.status_code == 202, registered.text
        await shown(client, "secret-agent", lambda agent: True)
    async with deployment.client(other, "admin") as intruder:
        assert (await intruder.get("/v1/agents")).json()["items"] == []
        assert (await intruder.get("/v1/agents/secret-agent")).status_code == 404


async def test_rotation_revocation_and_heartbeats(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    grace_until = datetime.now(UTC) + timedelta(hours=1)
    async with deployment.client(tenant, "admin") as client:
        for body in (
            KeyPair.new().body("runner", key_id="k1"),
            KeyPair.new().body(
                "runner",
                key_id="k2",
                previous_key_id="k1",
                previous_key_valid_until=grace_until.isoformat(),
            ),
        ):
            assert (await client.post("/v1/agents", json=body)).status_code == 202
        await deployment.pipeline.publish(
            "agent.heartbeat",
            tenant_id=tenant,
            subject="runner",
            data={
                "agent_name": "runner",
                "instance_id": "host-1:42",
                "key_id": "k2",
                "status": "busy",
                "active_runs": 2,
            },
        )
        rotated = await shown(client, "runner", lambda agent: agent["status"] == "busy")
        third = KeyPair.new().body(
            "runner", key_id="k3", previous_key_id="k2", revoked_key_ids=["k1"]
        )
        assert (await client.post("/v1/agents", json=third)).status_code == 202
        revoked = await shown(client, "runner", lambda agent: agent["current_key_id"] == "k3")
    assert states(rotated) == {"k1": "grace", "k2": "current"}
    assert datetime.fromisoformat(rotated["keys"][0]["retired_at"]) == grace_until
    [instance] = rotated["instances"]
    assert (instance["instance_id"], instance["active_runs"]) == ("host-1:42", 2)
    assert rotated["last_heartbeat_at"] == instance["last_heartbeat_at"]
    assert states(revoked) == {"k1": "revoked", "k2": "retired", "k3": "current"}


async def test_a_key_id_cannot_be_bound_to_other_keys(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    keys = KeyPair.new()
    async with deployment.client(tenant, "admin") as client:
        first = await client.post("/v1/agents", json=keys.body("ux", key_id="ux-1"))
        assert first.status_code == 202, first.text
        await shown(client, "ux", lambda agent: True)
        swapped = await client.post("/v1/agents", json=KeyPair.new().body("ux", key_id="ux-1"))
        same = await client.post("/v1/agents", json=keys.body("ux", key_id="ux-1", role="UX"))
    assert swapped.status_code == 409, swapped.text
    assert same.status_code == 202, same.text
    assert len(await deployment.published("agents", tenant)) == 2


async def test_the_projection_gives_the_same_rows_in_any_order(deployment: Deployment) -> None:
    """Registrations, a rotation, a revocation that comes before the key it
    revokes, and two heartbeats: applied in every order, twice, the agent reads the same."""
    start = datetime(2030, 1, 1, tzinfo=UTC)

    def event(event_type: str, minute: int, **data: Any) -> Envelope[Any]:
        built = build_event(
            CATALOG.get(event_type),
            subject="runner",
            tenant_id="order-template",
            data={"agent_name": "runner", **data},
            source="test",
        )
        return built.model_copy(update={"time": start + timedelta(minutes=minute)})

    def registered(minute: int, key_id: str, **data: Any) -> Envelope[Any]:
        keys = KeyPair.new()
        return event(
            "agent.registered",
            minute,
            key_id=key_id,
            signing_public_key=keys.signing,
            hpke_public_key=keys.hpke,
            suite="x25519_sha256_chacha20poly1305",
            **data,
        )

    def heartbeat(minute: int, status: str) -> Envelope[Any]:
        return event(
            "agent.heartbeat", minute, instance_id="i-1", key_id="k1", status=status, active_runs=0
        )

    events = [
        registered(0, "k0", role="old"),
        registered(1, "k1", role="new", previous_key_id="k0", revoked_key_ids=["k9"]),
        registered(2, "k9", role="newest"),
        heartbeat(1, "busy"),
        heartbeat(3, "idle"),
    ]
    projection = AgentDirectory()
    outcomes = []
    async with deployment.pipeline.pool.acquire() as conn:
        scratch = conn.transaction()  # rolled back: rows no event in the archive backs
        await scratch.start()
        try:
            for order in itertools.permutations(events):
                tenant = f"order-{uuid.uuid4().hex[:8]}"
                for applied in [*order, *order]:
                    envelope = applied.model_copy(update={"tenant_id": tenant})
                    await projection.apply(conn, ProjectedEvent(0, envelope))
                outcomes.append(await get_agent(conn, tenant, "runner"))
        finally:
            await scratch.rollback()
    assert all(outcome == outcomes[0] for outcome in outcomes)
    agent = outcomes[0]
    assert agent is not None
    assert (agent.role, agent.current_key_id) == ("newest", "k9")
    at = start + timedelta(minutes=4)
    assert {key.key_id: key.state(agent.current_key_id, at) for key in agent.keys} == {
        "k0": KeyState.RETIRED,
        "k1": KeyState.RETIRED,
        "k9": KeyState.REVOKED,
    }
    assert [(i.status, i.last_heartbeat_at) for i in agent.instances] == [
        ("idle", start + timedelta(minutes=3))
    ]
    assert agent.status(at) == "idle"
    assert agent.status(at + timedelta(hours=1)) == "offline"


async def test_rebuild_reproduces_the_rows(deployment: Deployment) -> None:
    """Keys, a rotation and a heartbeat of its own tenant (plus whatever earlier
    tests left) rebuilt from the archive give the same rows."""
    projection = AgentDirectory()
    pool = deployment.pipeline.pool
    tenant = deployment.pipeline.new_tenant()
    async with deployment.client(tenant, "admin") as client:
        for body in (
            KeyPair.new().body("rebuilt", key_id="r1"),
            KeyPair.new().body("rebuilt", key_id="r2", previous_key_id="r1"),
        ):
            assert (await client.post("/v1/agents", json=body)).status_code == 202
        await deployment.pipeline.publish(
            "agent.heartbeat",
            tenant_id=tenant,
            subject="rebuilt",
            data={
                "agent_name": "rebuilt",
                "instance_id": "host-9:1",
                "key_id": "r2",
                "status": "idle",
                "active_runs": 0,
            },
        )
        await shown(client, "rebuilt", lambda agent: agent["status"] == "idle")
    await eventually(lambda: caught_up(pool, projection), timeout=30, interval=0.2)
    before = await dump_projection(pool, projection)
    assert all(before.values()), {table: len(rows) for table, rows in before.items()}

    result = await run_cli(["projections", "rebuild", projection.name], deployment.pipeline.env)
    assert result.returncode == 0, result.stderr
    assert f"rebuilt {projection.name}" in result.stdout
    assert await dump_projection(pool, projection) == before


async def test_runs_are_listed_filtered_isolated_and_rebuilt(deployment: Deployment) -> None:
    pipeline, projection = deployment.pipeline, RunsProjection()
    tenant, other = pipeline.new_tenant(), pipeline.new_tenant()
    run = {"project_id": "shop", "agent_name": "developer"}
    for run_id, lifecycle in (
        ("run-a", [("agent.run_accepted", {"reserved_micros": 5})]),
        (
            "run-b",
            [
                ("agent.started", {"instance_id": "i"}),
                ("agent.failed", {"reason": "timeout", "error_message": "slow"}),
            ],
        ),
    ):
        for event_type, data in lifecycle:
            await pipeline.publish(
                event_type, tenant_id=tenant, subject=run_id, data={**run, "run_id": run_id, **data}
            )

    async with deployment.client(tenant, "viewer") as client:

        async def projected() -> bool:
            listed = (await client.get("/v1/runs")).json()["items"]
            return [(r["run_id"], r["status"]) for r in listed] == [
                ("run-a", "accepted"),
                ("run-b", "failed"),
            ]

        await eventually(projected, timeout=30, interval=0.2)
        failed = (await client.get("/v1/runs", params={"status": "failed"})).json()
        assert [r["run_id"] for r in failed["items"]] == ["run-b"]
        assert failed["items"][0]["reason"] == "timeout"
        page = (await client.get("/v1/runs", params={"limit": 1})).json()
        assert [r["run_id"] for r in page["items"]] == ["run-a"] and page["next_after"] == "run-a"
        one = await client.get("/v1/runs/run-a")
        assert one.status_code == 200 and one.json()["cost_micros"] == 0
        for bad in ({"status": "finished"}, {"limit": 0}, {"agent_name": ""}):
            assert (await client.get("/v1/runs", params=bad)).status_code == 422
    async with deployment.client(other, "admin") as client:
        assert (await client.get("/v1/runs")).json()["items"] == []
        assert (await client.get("/v1/runs/run-a")).status_code == 404

    before = await dump_projection(pipeline.pool, projection)
    result = await run_cli(["projections", "rebuild", projection.name], pipeline.env)
    assert result.returncode == 0, result.stderr
    assert await dump_projection(pipeline.pool, projection) == before
