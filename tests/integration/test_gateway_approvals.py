"""Approvals over real HTTP, judged by the real approvals processor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from event_store.projections import ProjectedEvent
from gateway.settings import GatewaySettings
from producers.publisher import build_event
from streams.approvals import ApprovalsProjection
from tests.conftest import Isolation, StackUnderTest
from tests.support.approvals import PERMISSION, request_approval, wait_approval, wait_archived
from tests.support.gateway import gateway_endpoints, serve_gateway
from tests.support.gateway_deployment import Deployment, open_deployment
from tests.support.pipeline import CATALOG


@pytest.fixture(scope="module")
async def deployment(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    log_dir = tmp_path_factory.mktemp("gateway-approvals")
    async with open_deployment(stack, registry_url, log_dir) as running:
        yield running


async def pending(deployment: Deployment, tenant: str, **kw: Any) -> str:
    approval_id = await request_approval(deployment.pipeline, tenant, **kw)
    await wait_approval(deployment.pipeline, tenant, approval_id, "pending")
    return approval_id


@pytest.mark.parametrize(("action", "status"), [("approve", "approved"), ("deny", "denied")])
async def test_a_decision_answers_with_the_verdict(
    deployment: Deployment, action: str, status: str
) -> None:
    tenant = deployment.pipeline.new_tenant()
    approval_id = await pending(deployment, tenant)
    token = await deployment.gateway.key(tenant, "manager")
    async with deployment.gateway.client(token) as client:
        answer = await client.post(
            f"/v1/approvals/{approval_id}/{action}", json={"reason": "looks right"}
        )
        assert answer.status_code == 200, answer.text
        shown = (await client.get(f"/v1/approvals/{approval_id}")).json()
    body = answer.json()
    assert body["approval"] == shown
    assert (shown["status"], shown["comment"]) == (status, "looks right")
    assert shown["decider"] == token.split("_")[1]
    assert shown["deciding_event_id"] == body["command_id"]
    [verdict] = await wait_archived(deployment.pipeline, tenant, 1, f"approval.{status}")
    assert str(verdict.id) == shown["verdict_event_id"]
    [command] = await wait_archived(deployment.pipeline, tenant, 1, "approval.decision_submitted")
    assert (command.source, command.subject) == ("gateway", approval_id)
    assert PERMISSION in command.data.decider_permissions


async def test_deciding_twice_is_a_conflict(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    approval_id = await pending(deployment, tenant)
    async with deployment.client(tenant, "manager") as client:
        first = await client.post(f"/v1/approvals/{approval_id}/approve")
        assert first.status_code == 200, first.text
        second = await client.post(f"/v1/approvals/{approval_id}/deny", json={})
        assert second.status_code == 409, second.text
        still = (await client.get(f"/v1/approvals/{approval_id}")).json()
    problem = second.json()
    assert (problem["reason"], problem["detail"]) == ("already_decided", "already approved")
    assert problem["approval_id"] == approval_id and problem["command_id"]
    assert (still["status"], still["deciding_event_id"]) == (
        "approved",
        first.json()["command_id"],
    )


async def test_an_expired_approval_is_a_conflict(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    approval_id = await request_approval(
        deployment.pipeline, tenant, expires_in=timedelta(seconds=1)
    )
    await wait_approval(deployment.pipeline, tenant, approval_id, "expired")
    async with deployment.client(tenant, "admin") as client:
        answer = await client.post(f"/v1/approvals/{approval_id}/approve")
    assert answer.status_code == 409, answer.text
    assert answer.json()["reason"] == "expired"


async def test_the_processor_refuses_a_decider_without_the_required_permission(
    deployment: Deployment,
) -> None:
    """The approval asks for a permission no gateway role has: the gateway lets the
    admin through, the processor says forbidden, the answer is 403 naming it."""
    tenant = deployment.pipeline.new_tenant()
    approval_id = await pending(deployment, tenant, permission="deploy:production")
    async with deployment.client(tenant, "admin") as client:
        answer = await client.post(f"/v1/approvals/{approval_id}/approve")
        still = (await client.get(f"/v1/approvals/{approval_id}")).json()
    assert answer.status_code == 403, answer.text
    assert (answer.json()["reason"], answer.json()["permission"]) == (
        "forbidden",
        "deploy:production",
    )
    assert still["status"] == "pending"


async def test_another_tenant_cannot_see_or_decide_an_approval(deployment: Deployment) -> None:
    owner, intruder = deployment.pipeline.new_tenant(), deployment.pipeline.new_tenant()
    approval_id = await pending(deployment, owner)
    async with deployment.client(intruder, "admin") as client:
        for action in ("approve", "deny"):
            answer = await client.post(f"/v1/approvals/{approval_id}/{action}")
            assert answer.status_code == 404, answer.text
        assert (await client.get(f"/v1/approvals/{approval_id}")).status_code == 404
        assert (await client.get("/v1/approvals")).json()["items"] == []
    async with deployment.client(owner, "viewer") as client:
        assert (await client.get(f"/v1/approvals/{approval_id}")).json()["status"] == "pending"
    assert await deployment.published("commands", intruder) == []


async def test_a_viewer_lists_but_cannot_decide(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    approval_id = await pending(deployment, tenant)
    async with deployment.client(tenant, "viewer") as viewer:
        refused = await viewer.post(f"/v1/approvals/{approval_id}/approve")
        listed = await viewer.get("/v1/approvals", params={"status": "pending"})
    assert refused.status_code == 403
    assert refused.json()["permission"] == "approvals:approve"
    assert [a["approval_id"] for a in listed.json()["items"]] == [approval_id]
    assert await deployment.published("commands", tenant) == []


async def test_listing_filters_by_status_and_pages(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    ids = sorted([await pending(deployment, tenant) for _ in range(3)])
    async with deployment.client(tenant, "manager") as client:
        denied = await client.post(f"/v1/approvals/{ids[1]}/deny")
        assert denied.status_code == 200, denied.text
        first = (await client.get("/v1/approvals", params={"limit": 2})).json()
        rest = (
            await client.get("/v1/approvals", params={"limit": 2, "after": first["next_after"]})
        ).json()
        by_status = {
            status: [
                a["approval_id"]
                for a in (await client.get("/v1/approvals", params={"status": status})).json()[
                    "items"
                ]
            ]
            for status in ("pending", "denied", "approved")
        }
        bad = [
            await client.get("/v1/approvals", params=params)
            for params in ({"status": "maybe"}, {"limit": 0}, {"limit": 5000})
        ]
    assert [a["approval_id"] for a in first["items"] + rest["items"]] == ids
    assert rest["next_after"] is None
    assert by_status == {"pending": [ids[0], ids[2]], "denied": [ids[1]], "approved": []}
    assert [answer.status_code for answer in bad] == [422, 422, 422]


async def test_bad_decision_bodies_are_refused_and_nothing_is_published(
    deployment: Deployment,
) -> None:
    tenant = deployment.pipeline.new_tenant()
    approval_id = await pending(deployment, tenant)
    async with deployment.client(tenant, "manager") as client:
        for body in ({"reason": 5}, {"verdict": "approve"}, {"reason": "x" * 2001}):
            answer = await client.post(f"/v1/approvals/{approval_id}/approve", json=body)
            assert answer.status_code == 422, (body, answer.text)
        unknown = await client.post("/v1/approvals/appr-nobody-asked/approve")
        assert unknown.status_code == 404
        assert (await client.get(f"/v1/approvals/{approval_id}")).json()["status"] == "pending"
    assert await deployment.published("commands", tenant) == []


async def test_a_slow_processor_gets_a_202_with_a_link(
    stack: StackUnderTest, isolation: Isolation, registry_url: str
) -> None:
    """No streams worker here: the command is published, nobody answers."""
    endpoints = gateway_endpoints(
        stack,
        registry_url,
        database_url=isolation.database_url,
        topic_prefix=isolation.topic_prefix,
    )
    settings = GatewaySettings(redis_key_prefix=isolation.redis_prefix, approval_wait_seconds=0.2)
    async with serve_gateway(endpoints, settings) as gateway:
        tenant = isolation.tenant_id
        async with gateway.client(await gateway.key(tenant, "manager")) as client:
            assert (await client.get("/v1/approvals")).json()["items"] == []  # tables installed
            request = build_event(
                CATALOG.get("approval.requested"),
                subject="appr-slow",
                tenant_id=tenant,
                data={
                    "approval_id": "appr-slow",
                    "run_id": "run-slow",
                    "agent_name": "deployer",
                    "action": "deploy",
                    "risk_level": "high",
                    "required_permission": PERMISSION,
                    "expires_at": datetime.now(UTC) + timedelta(hours=1),
                },
                source="test",
            )
            async with gateway.services.pool.acquire() as conn:
                await ApprovalsProjection().apply(conn, ProjectedEvent(1, request))
            answer = await client.post("/v1/approvals/appr-slow/approve")
            assert answer.status_code == 202, answer.text
            assert answer.headers["location"] == answer.json()["href"] == "/v1/approvals/appr-slow"
            linked = await client.get(answer.headers["location"])
    assert linked.json()["status"] == "pending"
    assert answer.json()["command_id"]
