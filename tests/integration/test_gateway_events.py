"""``POST /v1/events`` and ``/v1/commands`` over real HTTP: what the answer says is
what Kafka holds, and bad input is refused with a field path and publishes nothing."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.auth.rbac import ROLE_PERMISSIONS, Role
from gateway.settings import GatewaySettings
from tests.conftest import Isolation, StackUnderTest
from tests.support.gateway import RunningGateway, serve_gateway
from tests.support.publishing import at, decoded, endpoints_for, event_body, records_on


async def test_an_event_lands_where_the_answer_says(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    async with gateway.client(token) as client:
        answer = await client.post("/v1/events", json={**event_body(), "correlation_id": "flow-1"})
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["topic"] == f"{gateway.services.endpoints.topic_prefix}ledgerbus.costs"
    assert answer.headers["ratelimit-remaining"]

    (event,) = await decoded(gateway, [at(await records_on(gateway, ["costs"]), accepted)])
    assert str(event.id) == accepted["id"]
    assert (event.type, event.subject, event.tenant_id) == ("cost.recorded", "run-1", "acme")
    assert (event.source, event.correlation_id) == ("gateway", "flow-1")
    assert event.data.cost_micros == event_body()["data"]["cost_micros"]


async def test_a_batch_lands_in_order_per_subject(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    batch = [event_body(input_tokens=n) for n in range(4)] + [event_body("agent.heartbeat")]
    async with gateway.client(token) as client:
        answer = await client.post("/v1/events", json={"events": batch})
    assert answer.status_code == 202, answer.text
    accepted = answer.json()["events"]
    assert [a["type"] for a in accepted] == ["cost.recorded"] * 4 + ["agent.heartbeat"]
    same_subject = accepted[:4]
    assert len({a["partition"] for a in same_subject}) == 1
    assert [a["offset"] for a in same_subject] == sorted(a["offset"] for a in same_subject)

    records = await records_on(gateway)
    assert len(records) == 5
    events = await decoded(gateway, [at(records, a) for a in accepted])
    assert [str(e.id) for e in events] == [a["id"] for a in accepted]
    assert [e.data.input_tokens for e in events[:4]] == [0, 1, 2, 3]


async def test_bytes_travel_as_base64(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    signature, ciphertext = os.urandom(64), os.urandom(100)
    sealed = {
        "sender": "planner",
        "recipient": "coder",
        "sender_key_id": "k1",
        "recipient_key_id": "k2",
        "suite": "x25519_sha256_chacha20poly1305",
        "enc": base64.b64encode(b"\x01" * 32).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    body = {"type": "agent.message", "subject": "run-1", "data": {"sealed": sealed}}
    async with gateway.client(token) as client:
        answer = await client.post("/v1/events", json=body)
    assert answer.status_code == 202, answer.text
    (event,) = await decoded(gateway, await records_on(gateway, ["agent-messages"]))
    assert (event.data.sealed.signature, event.data.sealed.ciphertext) == (signature, ciphertext)


def _paths(answer: Any) -> list[str]:
    return [error["path"] for error in answer.json()["errors"]]


async def test_invalid_events_name_the_field_and_publish_nothing(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    good = event_body()
    missing = event_body()
    del missing["data"]["cost_micros"]
    cases: list[tuple[Any, str, str]] = [
        (missing, "data.cost_micros", "Field required"),
        (event_body(input_tokens="many"), "data.input_tokens", "integer"),
        (event_body(cost_micros=-1), "data.cost_micros", "greater than or equal to 0"),
        (event_body(surprise=1), "data.surprise", "Extra inputs"),
        ({**good, "subject": ""}, "subject", "at least 1 character"),
        ({**good, "tenant_id": "evil"}, "tenant_id", "credential"),
        ({**good, "id": "0" * 32}, "id", "Extra inputs"),
        ({**good, "type": "approval.approved"}, "type", "approvals processor"),
        ({**good, "type": "agent.run_accepted"}, "type", "budget processor"),
        ({**good, "type": "webhook.subscribed"}, "type", "webhooks API"),
        ({**good, "type": "audit.checkpoint"}, "type", "checkpointer"),
        ({**good, "type": "budget.set"}, "type", "/v1/commands"),
        (["not", "an", "object"], "", "JSON object"),
        ({"events": [good, good, missing]}, "events.2.data.cost_micros", "Field required"),
        ({"events": [good, "oops"]}, "events.1", "JSON object"),
        ({"events": []}, "events", "non-empty"),
        ({"events": [good], "extra": 1}, "extra", "only 'events'"),
    ]
    async with gateway.client(token) as client:
        for body, path, reason in cases:
            answer = await client.post("/v1/events", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            problem = answer.json()
            assert "nothing published" in problem["detail"]
            assert path in _paths(answer), (path, problem)
            assert any(reason in error["reason"] for error in problem["errors"]), problem

        unknown = await client.post("/v1/events", json={**good, "type": "cost.recorderd"})
        assert unknown.status_code == 422
        (error,) = unknown.json()["errors"]
        assert error["path"] == "type" and error["close_matches"][0] == "cost.recorded"
        assert "did you mean cost.recorded" in unknown.json()["detail"]

        for raw in (b'{"type": "cost.recorded",', b"\xff\xfe", b""):
            malformed = await client.post(
                "/v1/events", content=raw, headers={"content-type": "application/json"}
            )
            assert malformed.status_code == 400, malformed.text
            assert "not valid JSON" in malformed.json()["detail"]
    assert await records_on(gateway) == []


async def test_commands_need_their_own_permission(gateway: RunningGateway) -> None:
    run = {
        "type": "agent.run_requested",
        "subject": "run-7",
        "data": {
            "run_id": "run-7",
            "project_id": "proj-1",
            "agent_name": "coder",
            "task": "fix the build",
            "risk_level": "low",
            "cost_estimate_micros": 1000,
        },
    }
    budget = {"type": "budget.set", "subject": "proj-1", "data": event_body("budget.set")["data"]}
    viewer = await gateway.key("acme", "viewer")
    developer = await gateway.key("acme", "developer")
    manager = await gateway.key("acme", "manager")

    async with gateway.client(viewer) as client:
        refused = await client.post("/v1/commands", json=run)
    assert refused.status_code == 403
    assert refused.json()["permission"] not in ROLE_PERMISSIONS[Role.VIEWER]

    async with gateway.client(developer) as client:
        forbidden = await client.post("/v1/commands", json=budget)
        assert forbidden.status_code == 403
        assert forbidden.json()["permission"] == "budgets:manage"
        first = await client.post("/v1/commands", json=run)
        second = await client.post("/v1/commands", json={**run, "subject": "run-8"})
    assert first.status_code == second.status_code == 202, first.text
    # one request, one hit on the rate limit (the command's permission is checked apart)
    remaining = [int(a.headers["ratelimit-remaining"]) for a in (first, second)]
    assert remaining[0] - remaining[1] == 1

    async with gateway.client(manager) as client:
        assert (await client.post("/v1/commands", json=budget)).status_code == 202
        assert (await client.post("/v1/commands", json=run)).json()["permission"] == (
            "agents:execute"
        )

    records = await records_on(gateway, ["commands", "budgets"])
    events = {e.type: e for e in await decoded(gateway, records)}
    assert len(records) == 3
    developer_id = developer.split("_")[1]
    assert events["agent.run_requested"].data.requested_by == developer_id
    assert events["budget.set"].data.set_by == manager.split("_")[1]


async def test_who_decides_comes_from_the_credential(gateway: RunningGateway) -> None:
    manager = await gateway.key("acme", "manager")
    decision: dict[str, Any] = {
        "type": "approval.decision_submitted",
        "subject": "appr-1",
        "data": {"approval_id": "appr-1", "verdict": "approve"},
    }
    forged = {"decider": "ceo", "decider_permissions": ["approvals:approve", "users:manage"]}
    async with gateway.client(manager) as client:
        refused = await client.post(
            "/v1/commands", json={**decision, "data": {**decision["data"], **forged}}
        )
        assert refused.status_code == 422
        assert set(_paths(refused)) == {"data.decider", "data.decider_permissions"}
        answer = await client.post("/v1/commands", json=decision)
    assert answer.status_code == 202, answer.text
    (command,) = await decoded(gateway, await records_on(gateway, ["commands"]))
    assert command.data.decider == manager.split("_")[1]
    assert command.data.decider_permissions == sorted(ROLE_PERMISSIONS[Role.MANAGER])


async def test_commands_refuse_what_is_not_a_command(gateway: RunningGateway) -> None:
    admin = await gateway.key("acme", "admin")
    async with gateway.client(admin) as client:
        event = await client.post("/v1/commands", json=event_body())
        assert event.status_code == 422
        assert "/v1/events" in event.json()["detail"]
        typo = await client.post("/v1/commands", json={**event_body(), "type": "budget.sett"})
        assert typo.json()["errors"][0]["close_matches"] == ["budget.set"]
        batch = await client.post("/v1/commands", json={"events": [event_body()]})
        assert batch.status_code == 422
    assert await records_on(gateway) == []


@pytest.fixture
async def limited(
    stack: StackUnderTest, isolation: Isolation, registry_url: str
) -> AsyncIterator[RunningGateway]:
    settings = GatewaySettings(
        redis_key_prefix=isolation.redis_prefix, max_body_bytes=2048, max_batch_events=3
    )
    async with serve_gateway(endpoints_for(stack, isolation, registry_url), settings) as running:
        yield running


async def test_oversize_bodies_and_batches_are_refused(limited: RunningGateway) -> None:
    token = await limited.key("acme", "developer")
    huge = event_body(model="x" * 4000)
    async with limited.client(token) as client:
        declared = await client.post("/v1/events", json=huge)
        assert declared.status_code == 413, declared.text

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b" " * 1000  # valid JSON whitespace, but too much of it

        streamed = await client.post(
            "/v1/events", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413, streamed.text

    async with limited.client(token) as client:
        too_many = await client.post("/v1/events", json={"events": [event_body()] * 4})
        assert too_many.status_code == 413
        assert too_many.json()["max_batch_events"] == 3
        assert (
            await client.post("/v1/events", json={"events": [event_body()] * 3})
        ).status_code == 202
    assert len(await records_on(limited)) == 3


async def test_publishing_is_measured(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    async with gateway.client(token) as client:
        assert (await client.post("/v1/events", json=event_body())).status_code == 202
        metrics = (await client.get("/metrics")).text
    assert 'ledgerbus_gateway_publish_seconds_count{endpoint="events"}' in metrics
    assert 'ledgerbus_published_total{type="cost.recorded"}' in metrics
