"""The audit API over real HTTP: NDJSON history, chain verification, signed checkpoints.

Histories are written into the test's own event store exactly as the archiver
writes them (``tests.support.archived.archive``), so no pipeline is needed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from event_store.checkpoints import Signer, load_or_create_key
from event_store.store import EventStore
from gateway.settings import GatewaySettings
from schemas.catalog import default_catalog
from schemas.registry_client import RegistryClient
from schemas.serde import EventSerializer
from streams.checkpoints import checkpoint_event
from tests.conftest import Isolation, StackUnderTest
from tests.support.archived import EPOCH, archive, sample_events
from tests.support.gateway import RunningGateway, serve_gateway
from tests.support.publishing import endpoints_for

CATALOG = default_catalog()
TENANT, OTHER = "acme", "globex"


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "audit_ed25519.pem"


@pytest.fixture
async def audited(
    stack: StackUnderTest, isolation: Isolation, registry_url: str, key_path: Path
) -> AsyncIterator[RunningGateway]:
    """The gateway with an audit key configured (created by the test when it signs)."""
    settings = GatewaySettings(redis_key_prefix=isolation.redis_prefix, audit_key_path=key_path)
    async with serve_gateway(endpoints_for(stack, isolation, registry_url), settings) as running:
        yield running


@pytest.fixture
async def history(audited: RunningGateway, registry: RegistryClient) -> EventStore:
    """12 events of acme (five types, subjects run-0..2, a minute apart) and 3 of globex."""
    store = EventStore(audited.services.pool)
    serializer = EventSerializer(CATALOG, registry)
    await archive(store, serializer, sample_events(TENANT, 12))
    await archive(store, serializer, sample_events(OTHER, 3))
    return store


async def lines(gateway: RunningGateway, token: str, **params: Any) -> list[dict[str, Any]]:
    async with gateway.client(token) as client:
        answer = await client.get("/v1/audit/events", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in answer.text.splitlines()]


async def test_history_streams_in_order_with_filters(
    audited: RunningGateway, history: EventStore
) -> None:
    viewer = await audited.key(TENANT, "viewer")
    stored = [event async for event in history.read(TENANT)]
    everything = await lines(audited, viewer)
    assert [line["position"] for line in everything] == list(range(1, 13))
    assert [line["id"] for line in everything] == [str(event.event_id) for event in stored]
    assert [line["hash"] for line in everything] == [event.hash.hex() for event in stored]
    assert {line["tenant_id"] for line in everything} == {TENANT}
    assert everything[0]["type"] == "agent.started" and everything[0]["data"]["run_id"] == "run-0"

    def positions(found: list[dict[str, Any]]) -> list[int]:
        return [line["position"] for line in found]

    assert positions(await lines(audited, viewer, types="agent.*")) == [
        n for n in range(1, 13) if n % 5 != 4
    ]
    assert positions(
        await lines(audited, viewer, types=["workflow.started", "agent.completed"])
    ) == positions(await lines(audited, viewer, types="workflow.started,agent.completed"))
    assert positions(await lines(audited, viewer, subject="run-1")) == [2, 5, 8, 11]
    window = {"since": (EPOCH + timedelta(minutes=3)).isoformat(), "until": "2026-01-01T00:06Z"}
    assert positions(await lines(audited, viewer, **window)) == [4, 5, 6]
    assert positions(await lines(audited, viewer, from_position=11)) == [11, 12]


async def test_pages_end_with_the_next_position(
    audited: RunningGateway, history: EventStore
) -> None:
    viewer = await audited.key(TENANT, "viewer")
    page = await lines(audited, viewer, from_position=5, limit=3)
    assert [line.get("position") for line in page[:3]] == [5, 6, 7]
    assert page[3] == {"next_from_position": 8}
    filtered = await lines(audited, viewer, types="agent.heartbeat", limit=1)
    assert filtered[0]["position"] == 3 and filtered[1] == {"next_from_position": 8}
    last = await lines(audited, viewer, types="agent.heartbeat", from_position=8)
    assert [line["position"] for line in last] == [8]  # no cursor: nothing more matches


async def test_bad_queries_are_refused(audited: RunningGateway, history: EventStore) -> None:
    viewer = await audited.key(TENANT, "viewer")
    async with audited.client(viewer) as client:
        for params in (
            {"since": "2026-01-02T00:00Z", "until": "2026-01-01T00:00Z"},
            {"since": "2026-01-01T00:00:00"},  # no timezone
            {"from_position": 0},
            {"limit": 0},
            {"limit": 100_001},
            {"types": "agent.*,"},
            {"subject": "run\x00"},
            {"from_position": 2**63},
        ):
            answer = await client.get("/v1/audit/events", params=params)
            assert answer.status_code == 422, (params, answer.text)
            assert answer.json()["detail"]


async def test_each_tenant_sees_only_its_own_history(
    audited: RunningGateway, history: EventStore
) -> None:
    other = await audited.key(OTHER, "admin")
    seen = await lines(audited, other)
    assert [line["position"] for line in seen] == [1, 2, 3]
    assert {line["tenant_id"] for line in seen} == {OTHER}
    assert await lines(audited, other, from_position=4) == []
    async with audited.client(other) as client:
        verified = (await client.get("/v1/audit/verify")).json()
    assert (verified["ok"], verified["length"]) == (True, 3)
    newcomer = await audited.key("nobody-yet", "viewer")
    async with audited.client(newcomer) as client:
        empty = (await client.get("/v1/audit/verify")).json()
    assert (empty["ok"], empty["length"], empty["head"]) == (True, 0, "00" * 32)


async def test_verify_finds_the_tampered_row(audited: RunningGateway, history: EventStore) -> None:
    viewer = await audited.key(TENANT, "viewer")
    async with audited.client(viewer) as client:
        honest = (await client.get("/v1/audit/verify")).json()
        head = await history.head(TENANT)
        assert honest == {
            "ok": True,
            "length": 12,
            "head": head.hash.hex(),
            "first_bad_position": None,
            "reason": None,
            "detail": None,
            "checkpoints_verified": 0,
        }
        await history.pool.execute(
            "UPDATE events SET body = set_byte(body, 3, (get_byte(body, 3) + 1) % 256) "
            "WHERE tenant_id = $1 AND position = 7",
            TENANT,
        )
        tampered = (await client.get("/v1/audit/verify")).json()
        other = await audited.key(OTHER, "viewer")
        async with audited.client(other) as globex:
            untouched = (await globex.get("/v1/audit/verify")).json()
    assert (tampered["ok"], tampered["first_bad_position"], tampered["length"]) == (False, 7, 6)
    assert tampered["reason"] == "changed_bytes"
    assert untouched["ok"] is True


async def test_checkpoints_come_with_the_key_that_checks_them(
    audited: RunningGateway, history: EventStore, registry: RegistryClient, key_path: Path
) -> None:
    viewer = await audited.key(TENANT, "viewer")
    async with audited.client(viewer) as client:
        unsigned = (await client.get("/v1/audit/checkpoints")).json()
        assert unsigned == {"public_key": None, "checkpoints": [], "next_from_position": None}

        signer = Signer(load_or_create_key(key_path))  # as the archiver does, on first use
        head = await history.head(TENANT)
        serializer = EventSerializer(CATALOG, registry)
        signed = signer.sign(TENANT, head.position, head.hash)
        forged = Signer(Ed25519PrivateKey.generate()).sign(TENANT, head.position, head.hash)
        await archive(history, serializer, [checkpoint_event(signed, "test")])
        answer = (await client.get("/v1/audit/checkpoints")).json()
        assert (await client.get("/v1/audit/verify")).json()["checkpoints_verified"] == 1

        await archive(history, serializer, [checkpoint_event(forged, "test")])
        both = (await client.get("/v1/audit/checkpoints")).json()
        paged = (await client.get("/v1/audit/checkpoints", params={"limit": 1})).json()
        broken = (await client.get("/v1/audit/verify")).json()

    public = serialization.load_pem_public_key(answer["public_key"]["pem"].encode())
    assert isinstance(public, Ed25519PublicKey)
    assert answer["public_key"]["key_id"] == signer.key_id
    [shown] = answer["checkpoints"]
    assert (shown["event_position"], shown["position"]) == (13, 12)
    assert shown["head_hash"] == head.hash.hex() and shown["signature_valid"] is True
    # Anyone can check it with the PEM alone.
    public.verify(base64.b64decode(shown["signature"]), bytes.fromhex(shown["signed_message_hex"]))

    assert [c["signature_valid"] for c in both["checkpoints"]] == [True, False]
    assert (len(paged["checkpoints"]), paged["next_from_position"]) == (1, 14)
    assert (broken["ok"], broken["first_bad_position"]) == (False, 14)
    assert broken["reason"] == "unknown_checkpoint_key"


async def test_audit_needs_audit_read(audited: RunningGateway, history: EventStore) -> None:
    developer = await audited.key(TENANT, "developer")  # publishes, cannot read the audit
    async with audited.client(developer) as client:
        for path in ("/v1/audit/events", "/v1/audit/verify", "/v1/audit/checkpoints"):
            answer = await client.get(path)
            assert answer.status_code == 403, path
            assert answer.json()["permission"] == "audit:read"
    async with audited.client() as anonymous:
        assert (await anonymous.get("/v1/audit/events")).status_code == 401
