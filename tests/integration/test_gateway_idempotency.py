"""``Idempotency-Key`` over real HTTP and real Redis: a retry answers the original and
publishes nothing more; a reused key with another body is a conflict."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from gateway.idempotency import Answer, Idempotency, IdempotencyConflict
from gateway.settings import GatewaySettings
from tests.conftest import Isolation, StackUnderTest
from tests.support.gateway import RunningGateway, serve_gateway
from tests.support.publishing import endpoints_for, event_body, records_on

KEY = {"Idempotency-Key": "order-42"}


async def test_a_retry_gets_the_original_answer(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    body = event_body()
    async with gateway.client(token) as client:
        first = await client.post("/v1/events", json=body, headers=KEY)
        # the same JSON written differently is the same request
        reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
        again = await client.post(
            "/v1/events",
            content=reordered,
            headers={**KEY, "content-type": "application/json"},
        )
    assert first.status_code == again.status_code == 202, first.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(await records_on(gateway)) == 1

    store = Idempotency(gateway.services.redis, gateway.services.settings.redis_key_prefix, 1)
    ttl = await gateway.services.redis.ttl(store.redis_key("acme", KEY["Idempotency-Key"]))
    assert 24 * 3600 - 60 < ttl <= 24 * 3600


async def test_a_reused_key_with_another_body_conflicts(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    async with gateway.client(token) as client:
        first = await client.post("/v1/events", json=event_body(), headers=KEY)
        other = await client.post("/v1/events", json=event_body(cost_micros=1), headers=KEY)
        batch = await client.post("/v1/events", json={"events": [event_body()]}, headers=KEY)
        workflow = event_body("workflow.started")
        del workflow["data"]["initiated_by"]  # stamped from the credential
        command = await client.post("/v1/commands", json=workflow, headers=KEY)
    assert first.status_code == 202
    assert other.status_code == batch.status_code == command.status_code == 409
    assert "different request body" in other.json()["detail"]
    assert len(await records_on(gateway)) == 1


async def test_concurrent_duplicates_publish_once(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    body = {"events": [event_body(input_tokens=n) for n in range(5)]}
    async with gateway.client(token) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/events", json=body, headers=KEY) for _ in range(20))
        )
    assert [a.status_code for a in answers] == [202] * 20
    assert len({a.text for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 19
    assert len(await records_on(gateway)) == 5


async def test_a_refused_request_frees_its_key(gateway: RunningGateway) -> None:
    token = await gateway.key("acme", "developer")
    invalid = event_body(cost_micros="lots")
    async with gateway.client(token) as client:
        assert (await client.post("/v1/events", json=invalid, headers=KEY)).status_code == 422
        fixed = await client.post("/v1/events", json=event_body(), headers=KEY)
        assert fixed.status_code == 202
        assert "idempotent-replayed" not in fixed.headers
        for bad in ("", "x" * 256, "tab\there"):
            refused = await client.post(
                "/v1/events", json=event_body(), headers={"Idempotency-Key": bad}
            )
            assert refused.status_code == 400, bad
    assert len(await records_on(gateway)) == 1


async def test_keys_belong_to_one_tenant(gateway: RunningGateway) -> None:
    ids = []
    for tenant in ("acme", "globex"):
        async with gateway.client(await gateway.key(tenant, "developer")) as client:
            answer = await client.post("/v1/events", json=event_body(), headers=KEY)
        assert answer.status_code == 202
        assert "idempotent-replayed" not in answer.headers
        ids.append(answer.json()["id"])
    assert ids[0] != ids[1]
    assert len(await records_on(gateway)) == 2


async def test_a_duplicate_waits_for_the_first_or_takes_over(gateway: RunningGateway) -> None:
    """Straight on the store, to hold the first request open at will."""
    redis, prefix = gateway.services.redis, gateway.services.settings.redis_key_prefix
    store = Idempotency(redis, prefix, 60)
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def first() -> Answer:
        runs.append("first")
        started.set()
        await release.wait()
        return Answer(202, {"by": "first"})

    async def second() -> Answer:
        runs.append("second")
        return Answer(202, {"by": "second"})

    holder = asyncio.create_task(store.run("acme", "k", "fp", first))
    await started.wait()
    waiter = asyncio.create_task(store.run("acme", "k", "fp", second))
    await asyncio.sleep(0.1)
    release.set()
    assert (await holder).answer.body == (await waiter).answer.body == {"by": "first"}
    assert (await waiter).replayed and runs == ["first"]

    impatient = Idempotency(redis, prefix, 60, wait_seconds=0.2)
    hanging, stuck = asyncio.Event(), asyncio.Event()

    async def hangs() -> Answer:
        hanging.set()
        await stuck.wait()
        raise RuntimeError("kafka said no")

    failing = asyncio.create_task(store.run("acme", "k2", "fp", hangs))
    await hanging.wait()
    with pytest.raises(IdempotencyConflict) as conflict:
        await impatient.run("acme", "k2", "fp", second)
    assert conflict.value.in_progress
    stuck.set()
    with pytest.raises(RuntimeError):
        await failing
    retried = await store.run("acme", "k2", "fp", second)  # the failure freed the key
    assert retried.answer.body == {"by": "second"} and not retried.replayed


@pytest.fixture
async def without_redis(
    stack: StackUnderTest, isolation: Isolation, registry_url: str
) -> AsyncIterator[RunningGateway]:
    """Redis nobody answers on (rate limits fail open, the default)."""
    endpoints = endpoints_for(stack, isolation, registry_url, redis_url="redis://127.0.0.1:9")
    settings = GatewaySettings(redis_key_prefix=isolation.redis_prefix)
    async with serve_gateway(endpoints, settings) as running:
        yield running


async def test_keys_are_refused_while_redis_is_down(without_redis: RunningGateway) -> None:
    token = await without_redis.key("acme", "developer")
    async with without_redis.client(token) as client:
        keyed = await client.post("/v1/events", json=event_body(), headers=KEY)
        assert keyed.status_code == 503
        assert "Idempotency-Key" in keyed.json()["detail"]
        assert len(await records_on(without_redis)) == 0
        plain = await client.post("/v1/events", json=event_body())
        assert plain.status_code == 202
    assert len(await records_on(without_redis)) == 1
