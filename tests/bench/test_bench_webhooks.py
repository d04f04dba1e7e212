"""Webhook delivery through the bus vs signed POSTs sent directly, to the same receiver.

Through the bus: publish → Kafka → matcher (queue in PostgreSQL) → dispatcher
(claim, sign, POST) → recorder (attempt events). Baseline, same run, same
keep-alive receiver (uvicorn in this process, verifying every signature): the
same number of bodies, signed with the same library, POSTed by one pooled
``httpx.AsyncClient`` with as many requests in flight as the dispatcher allows
per endpoint. Figures: deliveries/s for a burst, and publish→delivered latency
p50/p99 at a steady 200 events/s (baseline: POST latency at the same rate).
Prints figures; asserts only counts. ``make bench``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from producers.publisher import build_event
from schemas.models import Envelope
from streams.webhooks.payload import CONTENT_TYPE, body
from streams.webhooks.settings import load_webhook_settings
from streams.webhooks.signing import signature_headers
from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.pipeline import CATALOG, Pipeline, open_pipeline
from tests.support.receiver import Receiver, serve_receiver
from tests.support.webhooks import ALLOW_LOOPBACK, Endpoint, subscribe

BURST = 5_000
RATE = 200  # events/s for the latency run
STEADY = 2_000
CONCURRENCY = load_webhook_settings().concurrency
#: Consumed by no other processor, so the bus's cost here is webhook delivery's own.
WORKFLOW_STARTED = CATALOG.get("workflow.started")


def workflow_event(tenant: str, n: int) -> Envelope[Any]:
    """The n-th benchmark event, spread over 16 subjects (so over partitions)."""
    return build_event(
        WORKFLOW_STARTED,
        subject=f"wf-{n % 16}",
        tenant_id=tenant,
        data={"workflow_id": f"wf-{n}", "project_id": "p", "name": "release", "initiated_by": "a"},
        source="bench",
    )


def bodies(tenant: str, count: int) -> list[str]:
    return [body(workflow_event(tenant, n)) for n in range(count)]


async def post_all(receiver: Receiver, endpoint: Endpoint, texts: list[str]) -> float:
    """Baseline: POST every body, signed, ``CONCURRENCY`` at a time; returns seconds."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    url = receiver.url(endpoint.path)

    async def sender(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            text = queue.get_nowait()
            headers = signature_headers(endpoint.secret, f"d-{id(text)}", text, datetime.now(UTC))
            response = await client.post(
                url, content=text.encode(), headers={**headers, "content-type": CONTENT_TYPE}
            )
            assert response.status_code == 200

    async with httpx.AsyncClient(trust_env=False) as client:
        began = time.perf_counter()
        await asyncio.gather(*(sender(client) for _ in range(CONCURRENCY)))
        return time.perf_counter() - began


async def paced(count: int, rate: float, send: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start ``send(n)`` for n in range(count) at ``rate`` per second, then wait for all."""
    began = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for n in range(count):
        delay = began + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(n)))
    await asyncio.gather(*tasks)


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


async def wait_count(receiver: Receiver, endpoint: Endpoint, count: int) -> None:
    await eventually(lambda: len(receiver.delivered(endpoint.path)) >= count, timeout=300)


async def logged_count(pipeline: Pipeline, tenant: str, count: int) -> bool:
    """Whether the delivery log (the projection) holds ``count`` of the tenant's deliveries."""
    logged = await pipeline.pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE tenant_id = $1", tenant
    )
    return bool(logged >= count)


@pytest.fixture
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(
        stack, registry_url, tmp_path_factory.mktemp("bench-webhooks"), extra_env=ALLOW_LOOPBACK
    ) as running:
        yield running


async def test_webhook_delivery_vs_direct_posts(pipeline: Pipeline) -> None:
    async with serve_receiver() as receiver:
        tenant = pipeline.new_tenant()
        bus = await subscribe(pipeline, receiver, tenant, ["workflow.*"])
        direct = Endpoint(tenant, "direct", f"/{tenant}/direct", bus.secret)
        receiver.expect(direct.path, direct.secret)

        # warm-up: connections, registry lookups, code paths
        await pipeline.publisher.publish(workflow_event(tenant, 0))
        await wait_count(receiver, bus, 1)
        await post_all(receiver, direct, bodies(tenant, 100))

        # burst: deliveries/s
        events = [workflow_event(tenant, n) for n in range(BURST)]
        began = time.perf_counter()
        await pipeline.publisher.publish_many(events)
        published = time.perf_counter() - began
        await wait_count(receiver, bus, 1 + BURST)
        ours = time.perf_counter() - began
        baseline = await post_all(receiver, direct, bodies(tenant, BURST))
        assert len(receiver.delivered(direct.path)) == 100 + BURST

        # steady 200/s: publish→delivered latency, once the burst is fully logged
        await eventually(lambda: logged_count(pipeline, tenant, 1 + BURST), timeout=300)
        sent: dict[str, float] = {}

        async def publish_one(n: int) -> None:
            event = workflow_event(tenant, n)
            sent[str(event.id)] = time.monotonic()
            await pipeline.publisher.publish(event)

        await paced(STEADY, RATE, publish_one)
        await wait_count(receiver, bus, 1 + BURST + STEADY)
        arrived = {r.event_id: r.at for r in receiver.delivered(bus.path) if r.event_id in sent}
        assert len(arrived) == STEADY
        bus_p50, bus_p99 = percentiles([arrived[i] - sent[i] for i in sent])

        direct_latency: list[float] = []
        texts = bodies(tenant, STEADY)
        async with httpx.AsyncClient(trust_env=False) as client:

            async def post_one(n: int) -> None:
                headers = signature_headers(direct.secret, f"s-{n}", texts[n], datetime.now(UTC))
                start = time.monotonic()
                await client.post(
                    receiver.url(direct.path),
                    content=texts[n].encode(),
                    headers={**headers, "content-type": CONTENT_TYPE},
                )
                direct_latency.append(time.monotonic() - start)

            await paced(STEADY, RATE, post_one)
        direct_p50, direct_p99 = percentiles(direct_latency)

    failed = [r for r in receiver.received(bus.path) if not r.ok]
    assert failed == []
    print(
        f"\nwebhooks, {BURST} events burst: bus {BURST / ours:,.0f} deliveries/s "
        f"(publish alone {published:.2f}s, all delivered after {ours:.2f}s); "
        f"direct signed POSTs ({CONCURRENCY} in flight) {BURST / baseline:,.0f}/s; "
        f"ratio {baseline / ours:.2f}"
    )
    print(
        f"webhooks at {RATE} events/s x {STEADY}: publish->delivered p50 {bus_p50:.1f} ms, "
        f"p99 {bus_p99:.1f} ms; direct POST p50 {direct_p50:.1f} ms, p99 {direct_p99:.1f} ms"
    )
