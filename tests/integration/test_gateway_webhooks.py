"""The webhooks API over real HTTP, delivered by the real pipeline to a real receiver.

One deployment (archiver, streams worker with fast retries, gateway on the same
database and topics) serves the module; each test has its own tenants.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.gateway_deployment import Deployment, open_deployment
from tests.support.receiver import Answer, Receiver
from tests.support.webhooks import FAST_RETRIES, publish_budgets, wait_delivered
from tests.support.webhooks import Endpoint as Registered

#: The gateway's SSRF guard, like the worker's, must let the loopback receiver in.
LOOPBACK = {"LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}


@pytest.fixture(scope="module")
async def deployment(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    log_dir = tmp_path_factory.mktemp("gateway-webhooks")
    async with open_deployment(
        stack, registry_url, log_dir, extra_env={**FAST_RETRIES, **LOOPBACK}
    ) as running:
        yield running


async def create(
    client: httpx.AsyncClient, receiver: Receiver, tenant: str, types: list[str]
) -> Registered:
    """POST /v1/webhooks to a receiver path that checks the returned secret."""
    path = f"/{tenant}/{uuid.uuid4().hex[:8]}"
    answer = await client.post(
        "/v1/webhooks", json={"url": receiver.url(path), "event_types": types}
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    receiver.expect(path, body["secret"])
    return Registered(tenant, body["webhook_id"], path, body["secret"])


async def deliveries(
    client: httpx.AsyncClient, endpoint: Registered, **params: Any
) -> dict[str, Any]:
    answer = await client.get(f"/v1/webhooks/{endpoint.webhook_id}/deliveries", params=params)
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


async def wait_logged(
    client: httpx.AsyncClient, endpoint: Registered, status: str, count: int
) -> list[dict[str, Any]]:
    """Until the delivery log (over HTTP) shows ``count`` deliveries in ``status``."""
    found: list[dict[str, Any]] = []

    async def done() -> bool:
        found[:] = (await deliveries(client, endpoint, status=status))["deliveries"]
        return len(found) == count

    await eventually(done, timeout=30, interval=0.2)
    return found


async def test_lifecycle_is_delivered_signed_and_archived(
    deployment: Deployment, receiver: Receiver
) -> None:
    tenant = deployment.pipeline.new_tenant()
    async with deployment.client(tenant, "developer") as client:
        endpoint = await create(client, receiver, tenant, ["budget.*"])
        assert endpoint.secret.startswith("whsec_")
        shown = await client.get(f"/v1/webhooks/{endpoint.webhook_id}")  # no lag: folded
        assert shown.status_code == 200, shown.text
        assert shown.json() == {
            "webhook_id": endpoint.webhook_id,
            "url": receiver.url(endpoint.path),
            "event_types": ["budget.*"],
            "ordered": False,
            "enabled": True,
            "reason": None,
            "description": None,
        }
        listed = await client.get("/v1/webhooks")
        assert [w["webhook_id"] for w in listed.json()] == [endpoint.webhook_id]
        assert endpoint.secret not in listed.text + shown.text

        ids = await publish_budgets(deployment.pipeline, tenant, 2)
        await wait_delivered(receiver, endpoint, ids)
        assert all(r.verified for r in receiver.received(endpoint.path))

        patched = await client.patch(
            f"/v1/webhooks/{endpoint.webhook_id}",
            json={"event_types": ["workflow.*", "budget.*"], "ordered": True},
        )
        assert patched.status_code == 200, patched.text
        assert (patched.json()["event_types"], patched.json()["ordered"]) == (
            ["workflow.*", "budget.*"],
            True,
        )
        disabled = await client.patch(
            f"/v1/webhooks/{endpoint.webhook_id}", json={"enabled": False}
        )
        assert disabled.json()["enabled"] is False
        assert endpoint.secret not in patched.text + disabled.text

        assert (await client.delete(f"/v1/webhooks/{endpoint.webhook_id}")).status_code == 204
        assert (await client.get(f"/v1/webhooks/{endpoint.webhook_id}")).status_code == 404
        assert (await client.delete(f"/v1/webhooks/{endpoint.webhook_id}")).status_code == 404
        assert (await client.get("/v1/webhooks")).json() == []

    kinds = ("webhook.subscribed", "webhook.updated", "webhook.deleted")

    async def archived() -> bool:
        return len(await deployment.pipeline.archived(tenant, *kinds)) == 4

    await eventually(archived, timeout=30, interval=0.2)
    history = await deployment.pipeline.archived(tenant, *kinds)
    assert [e.type for e in history] == [kinds[0], kinds[1], kinds[1], kinds[2]]
    assert {(e.source, e.subject) for e in history} == {("gateway", endpoint.webhook_id)}
    assert history[1].data.ordered is True and history[2].data.enabled is False


async def test_test_ping_is_signed_logged_and_not_retried(
    deployment: Deployment, receiver: Receiver
) -> None:
    tenant = deployment.pipeline.new_tenant()
    async with deployment.client(tenant, "developer") as client:
        endpoint = await create(client, receiver, tenant, ["*"])
        answer = await client.post(f"/v1/webhooks/{endpoint.webhook_id}/test")
        assert answer.status_code == 200, answer.text
        ping = answer.json()
        assert (ping["succeeded"], ping["status_code"], ping["error"]) == (True, 200, None)
        [arrived] = receiver.received(endpoint.path)
        assert arrived.verified and arrived.webhook_id == ping["delivery_id"]
        assert (arrived.document["type"], arrived.document["tenantid"]) == ("webhook.ping", tenant)
        assert arrived.headers["content-type"] == "application/cloudevents+json"

        receiver.answer(endpoint.path, Answer(503, body=b"down for maintenance"))
        failed = (await client.post(f"/v1/webhooks/{endpoint.webhook_id}/test")).json()
        assert (failed["succeeded"], failed["status_code"]) == (False, 503)
        assert failed["response_body"] == "down for maintenance"

        log = (await deliveries(client, endpoint))["deliveries"]
        assert {(d["delivery_id"], d["status"]) for d in log} == {
            (ping["delivery_id"], "succeeded"),
            (failed["delivery_id"], "failed"),
        }
        assert {d["source_event_type"] for d in log} == {"webhook.ping"}
        retried = await client.post(
            f"/v1/webhooks/{endpoint.webhook_id}/deliveries/{failed['delivery_id']}/retry"
        )
        assert retried.status_code == 409
        assert "test ping" in retried.json()["detail"]

    async def recorded() -> bool:
        events = await deployment.pipeline.archived(
            tenant, "webhook.delivery_succeeded", "webhook.delivery_failed"
        )
        return len(events) == 2

    await eventually(recorded, timeout=30, interval=0.2)


async def test_delivery_log_retry_and_recover(deployment: Deployment, receiver: Receiver) -> None:
    tenant = deployment.pipeline.new_tenant()
    async with deployment.client(tenant, "manager") as client:
        endpoint = await create(client, receiver, tenant, ["budget.*"])
        base = f"/v1/webhooks/{endpoint.webhook_id}"
        receiver.answer(endpoint.path, Answer(500), times=10)  # five attempts each
        ids = await publish_budgets(deployment.pipeline, tenant, 2)
        dead = await wait_logged(client, endpoint, "dead", 2)
        assert {d["source_event_id"] for d in dead} == set(ids)
        assert (await deliveries(client, endpoint, status="succeeded"))["deliveries"] == []
        assert (await deliveries(client, endpoint, types="workflow.*"))["deliveries"] == []
        assert len((await deliveries(client, endpoint, types="budget.*"))["deliveries"]) == 2

        first = await deliveries(client, endpoint, limit=1)
        second = await deliveries(client, endpoint, limit=1, cursor=first["next_cursor"])
        assert second["next_cursor"] is None
        paged = [d["delivery_id"] for d in first["deliveries"] + second["deliveries"]]
        assert sorted(paged) == sorted(d["delivery_id"] for d in dead)

        one = dead[0]["delivery_id"]
        detail = (await client.get(f"{base}/deliveries/{one}")).json()
        tried = [(a["attempt"], a["succeeded"], a["status_code"]) for a in detail["attempt_log"]]
        assert tried == [(n, False, 500) for n in range(1, 6)]

        retried = await client.post(f"{base}/deliveries/{one}/retry")
        assert (retried.status_code, retried.json()) == (202, {"requeued": 1})
        source = next(d["source_event_id"] for d in dead if d["delivery_id"] == one)
        await wait_delivered(receiver, endpoint, [source])
        assert receiver.delivered(endpoint.path)[-1].webhook_id == one
        await wait_logged(client, endpoint, "succeeded", 1)
        again = await client.post(f"{base}/deliveries/{one}/retry")
        assert again.status_code == 409 and "succeeded" in again.json()["detail"]
        unknown = await client.post(f"{base}/deliveries/{uuid.uuid4()}/retry")
        assert unknown.status_code == 404

        recovered = await client.post(f"{base}/recover", json={"since": "2000-01-01T00:00:00Z"})
        assert (recovered.status_code, recovered.json()) == (202, {"requeued": 1})
        await wait_delivered(receiver, endpoint, ids)
        await wait_logged(client, endpoint, "succeeded", 2)

        for params in ({"status": "lost"}, {"cursor": "nonsense"}, {"limit": 0}):
            bad = await client.get(f"{base}/deliveries", params=params)
            assert bad.status_code == 422, params
        naive = await client.post(f"{base}/recover", json={"since": "2000-01-01T00:00:00"})
        assert naive.status_code == 422


async def test_another_tenant_finds_nothing(deployment: Deployment, receiver: Receiver) -> None:
    owner, other = deployment.pipeline.new_tenant(), deployment.pipeline.new_tenant()
    async with deployment.client(owner, "admin") as client:
        endpoint = await create(client, receiver, owner, ["budget.*"])
        ping = (await client.post(f"/v1/webhooks/{endpoint.webhook_id}/test")).json()
    base = f"/v1/webhooks/{endpoint.webhook_id}"
    async with deployment.client(other, "admin") as intruder:
        assert (await intruder.get("/v1/webhooks")).json() == []
        attempts = [
            intruder.get(base),
            intruder.patch(base, json={"enabled": False}),
            intruder.post(f"{base}/test"),
            intruder.get(f"{base}/deliveries"),
            intruder.get(f"{base}/deliveries/{ping['delivery_id']}"),
            intruder.post(f"{base}/deliveries/{ping['delivery_id']}/retry"),
            intruder.post(f"{base}/recover", json={"since": "2000-01-01T00:00:00Z"}),
            intruder.delete(base),
        ]
        for answer in await asyncio.gather(*attempts):
            assert answer.status_code == 404, (answer.request.url, answer.text)
    assert len(receiver.received(endpoint.path)) == 1  # only the owner's ping
    async with deployment.client(owner, "viewer") as viewer:
        refused = await viewer.get("/v1/webhooks")
        assert refused.status_code == 403
        assert refused.json()["permission"] == "webhooks:manage"
    async with deployment.client(owner, "admin") as client:
        still = (await client.get(base)).json()
    assert (still["enabled"], still["webhook_id"]) == (True, endpoint.webhook_id)


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        ({"url": "ftp://example.com/hook"}, "body.url", "only http and https"),
        ({"url": "http://10.0.0.1/hook"}, "body.url", "10.0.0.1 is a private address"),
        ({"url": "http://169.254.169.254/latest"}, "body.url", "cloud metadata"),
        ({"url": "http://a..b/hook"}, "body.url", "not a valid host name"),
        ({"url": "http://a b/hook"}, "body.url", "should match pattern"),
        ({"event_types": []}, "body.event_types", "at least 1 item"),
        ({"event_types": [""]}, "body.event_types.0", "at least 1 character"),
        ({"event_types": ["bugdet.*"]}, "body.event_types", "did you mean"),
        ({"event_types": ["webhook.*"]}, "body.event_types", "matches no event type"),
        ({"secret": "whsec_mine"}, "body.secret", "Extra inputs"),
    ],
)
async def test_bad_webhooks_are_refused_and_nothing_is_published(
    deployment: Deployment, receiver: Receiver, body: dict[str, Any], path: str, reason: str
) -> None:
    tenant = deployment.pipeline.new_tenant()
    valid = {"url": receiver.url("/never"), "event_types": ["budget.*"]}
    async with deployment.client(tenant, "developer") as client:
        answer = await client.post("/v1/webhooks", json={**valid, **body})
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        [error] = answer.json()["errors"]
        assert error["path"] == path and reason in error["reason"], error
        assert (await client.get("/v1/webhooks")).json() == []
    assert await deployment.published("webhooks", tenant) == []


async def test_bad_changes_are_refused(deployment: Deployment, receiver: Receiver) -> None:
    tenant = deployment.pipeline.new_tenant()
    async with deployment.client(tenant, "developer") as client:
        endpoint = await create(client, receiver, tenant, ["budget.*"])
        base = f"/v1/webhooks/{endpoint.webhook_id}"
        for change in ({}, {"url": "http://10.0.0.1/x"}, {"event_types": ["nope"]}, {"x": 1}):
            answer = await client.patch(base, json=change)
            assert answer.status_code == 422, (change, answer.text)
        assert (await client.get(base)).json()["url"] == receiver.url(endpoint.path)
        assert (await client.get("/v1/webhooks/wh%00x")).status_code == 422
    published = await deployment.published("webhooks", tenant)
    assert [dict(record.headers)["ce_type"] for record in published] == [b"webhook.subscribed"]


async def test_secret_is_never_shown_again(deployment: Deployment, receiver: Receiver) -> None:
    tenant = deployment.pipeline.new_tenant()
    async with deployment.client(tenant, "admin") as client:
        endpoint = await create(client, receiver, tenant, ["agent.*"])

        async def archived() -> bool:
            return bool(await deployment.pipeline.archived(tenant, "webhook.subscribed"))

        await eventually(archived, timeout=30, interval=0.2)
        shown = [
            await client.get("/v1/webhooks"),
            await client.get(f"/v1/webhooks/{endpoint.webhook_id}"),
            await client.get("/v1/audit/events"),
        ]
    for answer in shown:
        assert answer.status_code == 200, answer.text
        assert endpoint.secret not in answer.text
    [line] = [json.loads(line) for line in shown[-1].text.splitlines()]
    assert (line["type"], line["data"]["secret"]) == ("webhook.subscribed", "[redacted]")
