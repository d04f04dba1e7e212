"""Webhook delivery through the real pipeline: archiver + streams worker + a real receiver.

The workers retry within seconds (``FAST_RETRIES``: 0.2 s, 0.5 s, 1 s, 2 s, so
five attempts) and may reach the loopback receiver (``ALLOW_LOOPBACK``). Each
test uses its own tenant, so one pipeline serves the module.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from streams.webhooks.deliveries import attempts_of, list_deliveries
from streams.webhooks.queue import delivery_id
from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.cli import run_cli
from tests.support.pipeline import Pipeline, open_pipeline
from tests.support.receiver import Answer, Receiver
from tests.support.webhooks import (
    ALLOW_LOOPBACK,
    FAST_RETRIES,
    Endpoint,
    attempts,
    logged,
    publish_budgets,
    subscribe,
    wait_delivered,
)

#: More failures than the five attempts of FAST_RETRIES.
ALWAYS = 50


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    env = {**FAST_RETRIES, **ALLOW_LOOPBACK}
    async with open_pipeline(
        stack, registry_url, tmp_path_factory.mktemp("webhooks"), extra_env=env
    ) as running:
        yield running


async def wait_logged(pipeline: Pipeline, endpoint: Endpoint, count: int, status: str) -> None:
    """Until the delivery log shows ``count`` deliveries of the endpoint in ``status``."""

    async def done() -> bool:
        rows = (await logged(pipeline, endpoint)).values()
        return sum(1 for row in rows if row["status"] == status) == count

    await eventually(done, timeout=30)


async def test_events_arrive_signed_as_cloud_events(pipeline: Pipeline, receiver: Receiver) -> None:
    tenant = pipeline.new_tenant()
    budgets = await subscribe(pipeline, receiver, tenant, ["budget.*"])
    everything = await subscribe(pipeline, receiver, tenant, ["*"])
    ids = await publish_budgets(pipeline, tenant, 3)
    other = await pipeline.publish(
        "workflow.started",
        tenant_id=tenant,
        subject="wf-1",
        data={"workflow_id": "wf-1", "project_id": "p", "name": "release", "initiated_by": "ada"},
    )
    await wait_delivered(receiver, budgets, ids)
    await wait_delivered(receiver, everything, [*ids, str(other.event_id)])

    got = receiver.received(budgets.path)
    assert sorted(r.event_id for r in got) == sorted(ids)  # only budget.*, once each
    assert all(r.verified and r.status == 200 for r in got)
    first = got[0]
    assert first.headers["content-type"] == "application/cloudevents+json"
    assert first.webhook_id == delivery_id(budgets.webhook_id, uuid.UUID(first.event_id))
    document = first.document
    assert document["specversion"] == "1.0"
    assert document["type"] == "budget.set"
    assert document["tenantid"] == tenant
    assert document["subject"] == "proj-1"
    assert document["data"]["amount_micros"] == int(1e6) * (ids.index(first.event_id) + 1)

    await wait_logged(pipeline, budgets, 3, "succeeded")
    log = await logged(pipeline, budgets)
    assert set(log) == {r.webhook_id for r in got}
    assert {str(row["source_event_id"]) for row in log.values()} == set(ids)
    assert all(row["attempts"] == 1 and row["last_status_code"] == 200 for row in log.values())

    worker = next(p for p in pipeline.processes if p.name.startswith("streams"))
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{worker.metrics_port}/metrics")).text
    for family in (
        'ledgerbus_webhook_deliveries_total{outcome="succeeded"}',
        "ledgerbus_webhook_attempt_seconds_count",
        "ledgerbus_webhook_enqueued_total",
    ):
        [line] = [line for line in metrics.splitlines() if line.startswith(family)]
        assert float(line.split()[-1]) >= 3


async def test_receiver_down_then_up_gets_every_event(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    tenant = pipeline.new_tenant()
    endpoint = await subscribe(pipeline, receiver, tenant)
    await receiver.stop()
    try:
        ids = await publish_budgets(pipeline, tenant, 5)

        async def retrying() -> bool:
            failed = await pipeline.pool.fetchval(
                "SELECT count(*) FROM webhook_queue WHERE tenant_id = $1 AND attempts >= 2",
                tenant,
            )
            return bool(failed == 5)

        await eventually(retrying, timeout=30)
    finally:
        await receiver.start()
    await wait_delivered(receiver, endpoint, ids)
    delivered = receiver.delivered(endpoint.path)
    assert sorted(r.event_id for r in delivered) == sorted(ids)  # each exactly once

    await wait_logged(pipeline, endpoint, 5, "succeeded")
    tries = await attempts(pipeline, endpoint)
    for received in delivered:
        of_delivery = [a for a in tries if a["delivery_id"] == received.webhook_id]
        assert [a["succeeded"] for a in of_delivery][-1] is True
        failures = [a for a in of_delivery if not a["succeeded"]]
        assert len(failures) >= 2
        assert all(a["status_code"] is None and a["error"] for a in failures)


async def test_retries_keep_the_webhook_id_and_a_timeout_is_a_failure(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    tenant = pipeline.new_tenant()
    endpoint = await subscribe(pipeline, receiver, tenant)
    receiver.answer(endpoint.path, Answer(500, body=b"database\x00on fire"))
    receiver.answer(endpoint.path, Answer(delay=3.0))  # longer than the 1 s timeout
    [event_id] = await publish_budgets(pipeline, tenant, 1)
    await wait_delivered(receiver, endpoint, [event_id])
    got = receiver.received(endpoint.path)
    assert [r.status for r in got] == [500, 200, 200]  # the slow 200 came too late
    assert len({r.webhook_id for r in got}) == 1
    assert all(r.verified for r in got)

    await wait_logged(pipeline, endpoint, 1, "succeeded")
    tries = await attempts(pipeline, endpoint)
    assert [(a["attempt"], a["succeeded"], a["status_code"]) for a in tries] == [
        (1, False, 500),
        (2, False, None),
        (3, True, 200),
    ]
    assert tries[0]["response_body"] == "database\ufffdon fire"  # NUL: not storable
    assert "timed out" in tries[1]["error"]


async def test_retry_after_is_honoured(pipeline: Pipeline, receiver: Receiver) -> None:
    tenant = pipeline.new_tenant()
    endpoint = await subscribe(pipeline, receiver, tenant)
    receiver.answer(endpoint.path, Answer(429, {"retry-after": "2"}))
    [event_id] = await publish_budgets(pipeline, tenant, 1)
    await wait_delivered(receiver, endpoint, [event_id])
    first, second = receiver.received(endpoint.path)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.95  # the schedule alone would have retried after 0.2 s
    [failed] = await pipeline.archived(tenant, "webhook.delivery_failed")
    assert failed.data.status_code == 429
    assert failed.data.next_attempt_at is not None
    assert (failed.data.next_attempt_at - failed.time).total_seconds() == pytest.approx(2.0)


async def test_410_gone_disables_the_endpoint(pipeline: Pipeline, receiver: Receiver) -> None:
    tenant = pipeline.new_tenant()
    gone = await subscribe(pipeline, receiver, tenant)
    witness = await subscribe(pipeline, receiver, tenant)
    receiver.answer(gone.path, Answer(410), times=ALWAYS)
    first = await publish_budgets(pipeline, tenant, 1, subject="a")

    async def disabled() -> bool:
        return bool(await pipeline.archived(tenant, "webhook.updated"))

    await eventually(disabled, timeout=30)
    [update] = await pipeline.archived(tenant, "webhook.updated")
    assert update.data.webhook_id == gone.webhook_id
    assert update.data.enabled is False
    assert "410" in (update.data.reason or "")
    row = await pipeline.pool.fetchrow(
        "SELECT enabled, reason FROM webhook_subscriptions WHERE tenant_id = $1 "
        "AND webhook_id = $2",
        tenant,
        gone.webhook_id,
    )
    assert row is not None and row["enabled"] is False and "410" in row["reason"]

    later = await publish_budgets(pipeline, tenant, 2, subject="b")
    await wait_delivered(receiver, witness, [*first, *later])
    await asyncio.sleep(1.5)  # long past the first retry (0.2 s)
    assert [r.status for r in receiver.received(gone.path)] == [410]


async def test_a_deleted_endpoint_gets_nothing_more(pipeline: Pipeline, receiver: Receiver) -> None:
    tenant = pipeline.new_tenant()
    deleted = await subscribe(pipeline, receiver, tenant)
    witness = await subscribe(pipeline, receiver, tenant)
    await pipeline.publish(
        "webhook.deleted",
        tenant_id=tenant,
        subject=deleted.webhook_id,
        data={"webhook_id": deleted.webhook_id},
    )

    async def gone() -> bool:
        return bool(
            await pipeline.pool.fetchval(
                "SELECT deleted FROM webhook_subscriptions WHERE tenant_id = $1 "
                "AND webhook_id = $2",
                tenant,
                deleted.webhook_id,
            )
        )

    await eventually(gone, timeout=30)
    ids = await publish_budgets(pipeline, tenant, 2)
    await wait_delivered(receiver, witness, ids)
    await asyncio.sleep(0.5)
    assert receiver.received(deleted.path) == []


async def test_ordered_endpoint_holds_later_events_while_one_fails(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    tenant = pipeline.new_tenant()
    endpoint = await subscribe(pipeline, receiver, tenant, ordered=True)
    receiver.answer(endpoint.path, Answer(503), times=2)
    ids = await publish_budgets(pipeline, tenant, 5)  # one subject: one partition, in order
    await wait_delivered(receiver, endpoint, ids)
    got = receiver.received(endpoint.path)
    assert [r.event_id for r in got] == [ids[0], ids[0], *ids]
    assert [r.status for r in got] == [503, 503, *[200] * 5]


async def test_tenants_only_get_their_own_events(pipeline: Pipeline, receiver: Receiver) -> None:
    alice, bob = pipeline.new_tenant(), pipeline.new_tenant()
    alice_hook = await subscribe(pipeline, receiver, alice)
    bob_hook = await subscribe(pipeline, receiver, bob)
    # bob tries to point alice's endpoint at himself: his event names alice's webhook id
    await pipeline.publish(
        "webhook.updated",
        tenant_id=bob,
        subject=alice_hook.webhook_id,
        data={"webhook_id": alice_hook.webhook_id, "url": receiver.url(bob_hook.path)},
    )
    alice_ids = await publish_budgets(pipeline, alice, 3)
    bob_ids = await publish_budgets(pipeline, bob, 3)
    await wait_delivered(receiver, alice_hook, alice_ids)
    await wait_delivered(receiver, bob_hook, bob_ids)
    assert sorted(r.event_id for r in receiver.received(alice_hook.path)) == sorted(alice_ids)
    assert sorted(r.event_id for r in receiver.received(bob_hook.path)) == sorted(bob_ids)
    assert {r.document["tenantid"] for r in receiver.received(alice_hook.path)} == {alice}
    url = await pipeline.pool.fetchval(
        "SELECT url FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2",
        alice,
        alice_hook.webhook_id,
    )
    assert url == receiver.url(alice_hook.path)


async def test_dead_letter_then_redeliver_from_the_cli(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    tenant = pipeline.new_tenant()
    endpoint = await subscribe(pipeline, receiver, tenant)
    receiver.answer(endpoint.path, Answer(500), times=10)  # five attempts each, two events
    ids = await publish_budgets(pipeline, tenant, 2)
    await wait_logged(pipeline, endpoint, 2, "dead")
    dead = await pipeline.archived(tenant, "webhook.delivery_dead_lettered")
    assert sorted(str(e.data.source_event_id) for e in dead) == sorted(ids)
    assert all(e.data.attempts == 5 and e.data.last_status_code == 500 for e in dead)
    assert len(receiver.received(endpoint.path)) == 10
    async with pipeline.pool.acquire() as conn:  # the gateway's view of the log
        dead_log = await list_deliveries(conn, tenant, endpoint.webhook_id, status="dead")
        assert len(dead_log) == 2
        tried = await attempts_of(conn, tenant, dead_log[0].delivery_id)
        assert [(a.attempt, a.succeeded, a.status_code) for a in tried] == [
            (n, False, 500) for n in range(1, 6)
        ]
        assert await list_deliveries(conn, tenant, endpoint.webhook_id, status="succeeded") == []
        assert await list_deliveries(conn, pipeline.new_tenant(), endpoint.webhook_id) == []
        with pytest.raises(ValueError, match="unknown delivery status 'lost'"):
            await list_deliveries(conn, tenant, endpoint.webhook_id, status="lost")

    one = delivery_id(endpoint.webhook_id, dead[0].data.source_event_id)
    result = await run_cli(
        ["webhooks", "redeliver", "--tenant", tenant, "--delivery", one], pipeline.env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "re-queued 1 deliveries"
    await wait_delivered(receiver, endpoint, [str(dead[0].data.source_event_id)])
    assert receiver.delivered(endpoint.path)[-1].webhook_id == one
    assert len(receiver.received(endpoint.path)) == 11  # the other one is still dead

    since = datetime.now(UTC).replace(year=2000).isoformat()
    result = await run_cli(
        ["webhooks", "redeliver", "--tenant", tenant, "--failed-since", since], pipeline.env
    )
    assert result.stdout.strip() == "re-queued 1 deliveries", result.stderr
    await wait_delivered(receiver, endpoint, ids)
    await wait_logged(pipeline, endpoint, 2, "succeeded")
    assert {row["attempts"] for row in (await logged(pipeline, endpoint)).values()} == {6}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delivery", "nope"], "delivery nope of tenant"),
        ([], "give exactly one of --delivery and --failed-since"),
        (["--delivery", "x", "--failed-since", "2025-01-01T00:00:00Z"], "exactly one"),
        (["--failed-since", "2025-01-01T00:00:00"], "has no timezone"),
        (["--failed-since", "yesterday"], "not an ISO 8601 time"),
    ],
)
async def test_redeliver_refuses_bad_input(
    pipeline: Pipeline, args: list[str], message: str
) -> None:
    result = await run_cli(["webhooks", "redeliver", "--tenant", "t", *args], pipeline.env)
    assert result.returncode == 2
    assert message in result.stderr


async def test_create_and_list_from_the_cli(pipeline: Pipeline, receiver: Receiver) -> None:
    tenant = pipeline.new_tenant()
    url = receiver.url(f"/{tenant}/cli")
    types = ["--types", "budget.*", "--types", "agent.*"]
    result = await run_cli(
        ["webhooks", "create", "--tenant", tenant, "--url", url, *types, "--ordered"], pipeline.env
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["secret"].startswith("whsec_")
    receiver.expect(f"/{tenant}/cli", created["secret"])
    endpoint = Endpoint(tenant, created["webhook_id"], f"/{tenant}/cli", created["secret"])

    async def listed() -> list[dict[str, object]]:
        out = await run_cli(["webhooks", "list", "--tenant", tenant], pipeline.env)
        return [json.loads(line) for line in out.stdout.splitlines()]

    async def known() -> bool:
        return bool(await listed())

    await eventually(known, timeout=30, interval=0.5)
    [shown] = await listed()
    assert shown == {
        "webhook_id": endpoint.webhook_id,
        "url": url,
        "event_types": ["budget.*", "agent.*"],
        "ordered": True,
        "enabled": True,
        "reason": None,
        "description": None,
    }
    ids = await publish_budgets(pipeline, tenant, 1)
    await wait_delivered(receiver, endpoint, ids)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "only http and https"),
        ("http://10.0.0.1/hook", "SSRF guard: 10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest", "cloud metadata"),
    ],
)
async def test_create_refuses_bad_and_private_urls(
    pipeline: Pipeline, url: str, message: str
) -> None:
    tenant = pipeline.new_tenant()
    result = await run_cli(
        ["webhooks", "create", "--tenant", tenant, "--url", url, "--types", "*"], pipeline.env
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    await asyncio.sleep(1)  # what was published would be archived by now
    assert await pipeline.archived(tenant) == []


WEBHOOK_TABLES = (
    "webhook_subscriptions",
    "webhook_subscription_changes",
    "webhook_deliveries",
    "webhook_delivery_attempts",
)


async def snapshot(pipeline: Pipeline, tenant: str) -> dict[str, list[str]]:
    return {
        table: [
            row[0]
            for row in await pipeline.pool.fetch(
                f"SELECT t::text FROM {table} t WHERE tenant_id = $1 ORDER BY 1", tenant
            )
        ]
        for table in WEBHOOK_TABLES
    }


async def test_rebuild_reproduces_the_webhook_projections(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    tenant = pipeline.new_tenant()
    endpoint = await subscribe(pipeline, receiver, tenant)
    receiver.answer(endpoint.path, Answer(500))
    await pipeline.publish(
        "webhook.updated",
        tenant_id=tenant,
        subject=endpoint.webhook_id,
        data={"webhook_id": endpoint.webhook_id, "event_types": ["budget.*"]},
    )

    async def updated() -> bool:
        types = await pipeline.pool.fetchval(
            "SELECT event_types FROM webhook_subscriptions WHERE tenant_id = $1", tenant
        )
        return bool(types == ["budget.*"])

    await eventually(updated, timeout=30)
    ids = await publish_budgets(pipeline, tenant, 3)
    await wait_delivered(receiver, endpoint, ids)
    await wait_logged(pipeline, endpoint, 3, "succeeded")

    async def caught_up() -> bool:
        head = await pipeline.pool.fetchval(
            "SELECT position FROM chain_heads WHERE tenant_id = $1", tenant
        )
        reached = await pipeline.pool.fetch(
            "SELECT position FROM projection_checkpoints WHERE tenant_id = $1 "
            "AND projection = ANY($2::text[])",
            tenant,
            ["webhook_subscriptions", "webhook_deliveries"],
        )
        return len(reached) == 2 and all(row["position"] == head for row in reached)

    await eventually(caught_up, timeout=30)
    before = await snapshot(pipeline, tenant)
    assert [len(before[table]) for table in WEBHOOK_TABLES] == [1, 2, 3, 4]
    for name in ("webhook_subscriptions", "webhook_deliveries"):
        result = await run_cli(["projections", "rebuild", name], pipeline.env)
        assert result.returncode == 0, result.stderr
    assert await snapshot(pipeline, tenant) == before
