"""``POST /v1/events`` latency and batch throughput, next to same-run baselines.

(a) Single events at a paced ``RATE`` req/s from ``CONNECTIONS`` keep-alive
connections; latency runs from each request's scheduled send time (so a
stalled server is not hidden by a client that waits for it). Baseline: a bare
FastAPI route on the same app and server (same middleware) that only parses
the body, loaded the same way. The gateway's route adds authentication (API
key in PostgreSQL), the tenant rate limit in Redis, validation and a publish
confirmed by Kafka. The gateway runs in its own process
(``tests.support.gateway_proc``), as it does in production: in this one, the
load generator would share its event loop.
(b) Batches of ``BATCH`` events per request vs ``Publisher.publish_many`` of
the same events (building them included, and alone) on a publisher wired like
the gateway's. Prints figures; asserts only counts. ``make bench``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx

from gateway.services import GatewayEndpoints, GatewayServices, open_services
from gateway.settings import GatewaySettings
from producers.publisher import build_event
from schemas.catalog import default_catalog
from tests.conftest import Isolation, StackUnderTest
from tests.support.archive import eventually
from tests.support.publishing import endpoints_for, event_body

RATE = 500  # requests/s
SECONDS = 10
CONNECTIONS = 32
WARMUP = 300
BATCH = 1_000
BATCHES = 20
ROOT = Path(__file__).parents[2]


@asynccontextmanager
async def gateway_process(endpoints: GatewayEndpoints, redis_prefix: str) -> AsyncIterator[str]:
    """``tests.support.gateway_proc`` running; yields its URL once it answers."""
    env = {
        **os.environ,
        "LEDGERBUS_REDIS_KEY_PREFIX": redis_prefix,
        "LEDGERBUS_RATE_LIMIT_TENANT_PER_HOUR": str(10**9),  # counted, never reached
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.gateway_proc",
        json.dumps(dataclasses.asdict(endpoints)),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        url = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
        assert url.startswith("http://"), "the gateway process did not start"
        async with httpx.AsyncClient(base_url=url, trust_env=False) as probe:
            await eventually(lambda: _answers(probe))
        yield url
    finally:
        child.terminate()
        await child.wait()


async def _answers(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


@asynccontextmanager
async def connections(url: str, headers: dict[str, str]) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``CONNECTIONS`` clients of one keep-alive connection each: one shared pool
    spends more time assigning requests to its connections than the server does
    answering them."""
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(base_url=url, headers=headers, limits=one, timeout=30.0, trust_env=False)
        for _ in range(CONNECTIONS)
    ]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


async def paced(
    clients: list[httpx.AsyncClient], path: str, body: bytes, count: int
) -> list[float]:
    """Latencies (s) of ``count`` POSTs sent at ``RATE``/s, each from its scheduled time."""
    due: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while (scheduled := await due.get()) is not None:
            answer = await client.post(path, content=body)
            assert answer.status_code == 202, answer.text
            latencies.append(time.perf_counter() - scheduled)

    workers = [asyncio.create_task(worker(client)) for client in clients]
    start = time.perf_counter()
    for n in range(count):
        scheduled = start + n / RATE
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        due.put_nowait(scheduled)
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    assert len(latencies) == count
    return latencies


def summary(label: str, latencies: list[float], elapsed: float) -> float:
    """Prints throughput and percentiles; returns p99 (ms)."""
    cuts = statistics.quantiles(latencies, n=100)
    p50, p99 = cuts[49] * 1000, cuts[98] * 1000
    print(
        f"  {label:<34} {len(latencies) / elapsed:>7,.0f} req/s"
        f"  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {max(latencies) * 1000:7.2f} ms"
    )
    return p99


async def test_gateway_publish_latency_and_batches(
    stack: StackUnderTest, isolation: Isolation, registry_url: str
) -> None:
    endpoints = endpoints_for(stack, isolation, registry_url)
    settings = GatewaySettings(redis_key_prefix=isolation.redis_prefix)
    pool = await asyncpg.create_pool(isolation.database_url, min_size=1, max_size=4)
    try:
        async with (
            gateway_process(endpoints, isolation.redis_prefix) as url,
            # the same wiring in this process: its publisher is the baseline of (b)
            open_services(endpoints, default_catalog(), settings, pool=pool) as services,
        ):
            created = await services.keys.create(
                tenant_id=isolation.tenant_id, role="developer", tier="enterprise"
            )
            headers = {
                "Authorization": f"Bearer {created.token}",
                "content-type": "application/json",
            }
            # the load generator's own heap (this pytest process) out of the GC's
            # full collections: one pauses it for ~100 ms, which is not the gateway
            gc.freeze()
            try:
                async with connections(url, headers) as clients:
                    await single_events(clients)
                    over_http = await batches(clients[0])
            finally:
                gc.unfreeze()
            publishing, building = await publish_many(services, isolation.tenant_id)
    finally:
        await pool.close()
    total = BATCH * BATCHES
    prebuilt, own, ours = total / publishing, total / (building + publishing), total / over_http
    print(f"publish {BATCHES} batches of {BATCH} cost.recorded events, one at a time:")
    print(f"  Publisher.publish_many of pre-built events     {prebuilt:>9,.0f} events/s")
    print(f"  Publisher: build_event + publish_many          {own:>9,.0f} events/s")
    print(
        f"  POST /v1/events (HTTP+auth+validate+publish)   {ours:>9,.0f} events/s"
        f"  = {ours / own:.2f}x the publisher (aim >= 0.5x), {ours / prebuilt:.2f}x pre-built"
    )


async def single_events(clients: list[httpx.AsyncClient]) -> None:
    single = json.dumps(event_body()).encode()
    print(f"\nPOST one event at {RATE} req/s, {CONNECTIONS} keep-alive connections:")
    figures = {}
    for label, path in (("bare FastAPI (parse body)", "/bare"), ("/v1/events", "/v1/events")):
        await paced(clients, path, single, WARMUP)
        began = time.perf_counter()
        latencies = await paced(clients, path, single, RATE * SECONDS)
        figures[path] = (
            summary(label, latencies, time.perf_counter() - began),
            statistics.median(latencies),
        )
    (bare_p99, bare_p50), (ours_p99, ours_p50) = figures["/bare"], figures["/v1/events"]
    print(
        f"  overhead: p50 {ours_p50 / bare_p50:.1f}x, p99 {ours_p99 / bare_p99:.1f}x"
        f" the bare route (aim: p99 < 20 ms)"
    )
    metrics = (await clients[0].get("/metrics")).text
    kafka = {
        name: float(line.split()[-1])
        for line in metrics.splitlines()
        for name in ("sum", "count")
        if line.startswith(f'ledgerbus_gateway_publish_seconds_{name}{{endpoint="events"}}')
    }
    mean = kafka["sum"] / kafka["count"] * 1000
    print(f"  of which waiting for Kafka (gateway's histogram): mean {mean:.2f} ms")


async def batches(client: httpx.AsyncClient) -> float:
    """Seconds for ``BATCHES`` requests of ``BATCH`` events, one after the other."""
    body = json.dumps({"events": [event_body(subject=f"run-{n % 64}") for n in range(BATCH)]})
    await client.post("/v1/events", content=body)  # warm up
    began = time.perf_counter()
    for _ in range(BATCHES):
        answer = await client.post("/v1/events", content=body)
        assert answer.status_code == 202, answer.text
        assert len(answer.json()["events"]) == BATCH
    return time.perf_counter() - began


async def publish_many(services: GatewayServices, tenant: str) -> tuple[float, float]:
    """Seconds publishing and seconds building the same batches straight on a publisher."""
    cost = default_catalog().get("cost.recorded")
    data = event_body()["data"]
    building = publishing = 0.0
    for _ in range(BATCHES):
        began = time.perf_counter()
        events = [
            build_event(cost, subject=f"run-{n % 64}", tenant_id=tenant, data=data, source="b")
            for n in range(BATCH)
        ]
        built = time.perf_counter()
        assert len(await services.publisher.publish_many(events)) == BATCH
        building += built - began
        publishing += time.perf_counter() - built
    return publishing, building
