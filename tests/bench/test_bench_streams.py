"""SSE fan-out: 500 subscribers while 1,000 events/s are published, next to same-run baselines.

The gateway runs as ``ledgerbus gateway`` in its own process (as deployed: its
one hub consumer and every stream share that process's core); the publisher
and the subscribers run in this one. Latency runs from an event's scheduled
publish time to the moment a subscriber reads its ``id:`` line, so it includes
the producer's batching and Kafka, like the baselines:

- raw consumer: an aiokafka consumer assigned every partition (as the hub is)
  that decodes each event: the floor any stream sits on;
- one subscriber: a single SSE stream getting every event;
- 500 subscribers, each following one of 50 subjects: every event goes to 10
  of them (10,000 deliveries/s);
- broadcast: 500 subscribers that all get every event, at `BROADCAST_RATE`.

Prints figures; asserts only counts (every delivery arrived, no one dropped).
``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.api_keys import ApiKeyStore
from gateway.streams.hub import FETCH_MAX_WAIT_MS
from ledgerbus.embedded.ports import free_port
from producers.publisher import Publisher
from producers.topics import ensure_topics
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from schemas.topics import TOPICS, physical_name
from tests.conftest import Isolation, StackUnderTest
from tests.support.archive import eventually
from tests.support.streams import CATALOG, events

RATE = 1_000  # events/s
SECONDS = 5
SUBSCRIBERS = 500
SUBJECTS = 50  # so each event has SUBSCRIBERS / SUBJECTS subscribers
BROADCAST_RATE = 100
WARMUP = 200
ROOT = Path(__file__).parents[2]


@dataclass
class Deliveries:
    """Publish times by event id, and the latency of each delivery of them."""

    sent: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    last: float = 0.0

    def received(self, event_id: str, now: float) -> None:
        sent = self.sent.get(event_id)
        if sent is not None:
            self.latencies.append(now - sent)
            self.last = now

    def reset(self) -> None:
        """Forget the warm-up: readers keep writing here."""
        self.sent.clear()
        self.latencies.clear()


#: A subscriber: reads into the deliveries, sets the event once it gets every new event.
Reader = Callable[[Deliveries, asyncio.Event], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class GatewayProcess:
    url: str
    process: psutil.Process


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@asynccontextmanager
async def gateway_process(
    stack: StackUnderTest, isolation: Isolation, registry_url: str, log: Path
) -> AsyncIterator[GatewayProcess]:
    """``ledgerbus gateway`` on the test's database and topics, once it answers."""
    port = free_port()
    env = {
        **os.environ,
        **stack.endpoints.as_env(),
        "LEDGERBUS_DATABASE_URL": isolation.database_url,
        "LEDGERBUS_SCHEMA_REGISTRY_URL": registry_url,
        "LEDGERBUS_SERVE_SCHEMA_REGISTRY": "false",
        "LEDGERBUS_TOPIC_PREFIX": isolation.topic_prefix,
        "LEDGERBUS_REDIS_KEY_PREFIX": isolation.redis_prefix,
        "LEDGERBUS_GATEWAY_PORT": str(port),
        "LEDGERBUS_DATA_DIR": str(log.parent / ".ledgerbus"),
    }
    with log.open("ab") as out:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledgerbus", "gateway", cwd=ROOT, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, trust_env=False) as probe:

            async def ready() -> bool:
                assert child.returncode is None, f"ledgerbus gateway exited; see {log}"
                try:
                    return (await probe.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, timeout=90, interval=0.2)
        yield GatewayProcess(url, psutil.Process(child.pid))
    finally:
        child.terminate()
        await child.wait()


def sse_reader(client: httpx.AsyncClient, params: dict[str, str]) -> Reader:
    """A ``/v1/streams`` subscriber that notes every ``id:`` line as it reads it."""

    async def read(deliveries: Deliveries, ready: asyncio.Event) -> None:
        async with client.stream("GET", "/v1/streams", params=params) as response:
            assert response.status_code == 200, await response.aread()
            ready.set()  # the hub has it from before the headers were sent
            rest = b""
            async for chunk in response.aiter_raw():
                now = time.monotonic()
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line.startswith(b"id: "):
                        deliveries.received(line[4:].decode(), now)

    return read


def raw_reader(bootstrap: str, prefix: str, deserializer: EventDeserializer) -> Reader:
    """An aiokafka consumer assigned every partition and fetching as the hub does,
    decoding each event."""

    async def read(deliveries: Deliveries, ready: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=FETCH_MAX_WAIT_MS
        )
        await consumer.start()
        try:
            partitions = [
                TopicPartition(physical_name(topic, prefix), partition)
                for topic in TOPICS.values()
                for partition in range(topic.partitions)
            ]
            consumer.assign(partitions)
            for partition in partitions:  # resolve "latest" now, before anything is published
                await consumer.position(partition)
            ready.set()
            while True:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        event = await deserializer.deserialize(record.value)
                        deliveries.received(str(event.id), time.monotonic())
        finally:
            await consumer.stop()

    return read


async def paced(
    publisher: Publisher, batch: Sequence[Envelope[Any]], rate: int, deliveries: Deliveries
) -> float:
    """Publish ``batch`` at ``rate``/s in 10 ms ticks; returns the seconds it took."""
    per_tick = max(1, rate // 100)
    tasks = []
    start = time.monotonic()
    for tick, first in enumerate(range(0, len(batch), per_tick)):
        scheduled = start + tick * per_tick / rate
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        chunk = batch[first : first + per_tick]
        for event in chunk:
            deliveries.sent[str(event.id)] = scheduled
        tasks.append(asyncio.create_task(publisher.publish_many(chunk)))
    await asyncio.gather(*tasks)
    return time.monotonic() - start


@dataclass(frozen=True)
class Bench:
    gateway: GatewayProcess
    publisher: Publisher
    build: Callable[[int, int], list[Envelope[Any]]]  # (count, first number) -> events

    async def run(self, label: str, rate: int, readers: Sequence[tuple[Reader, int]]) -> None:
        """Start ``readers`` (each with the share of events it gets: 1/n), warm up, publish
        ``rate``/s for ``SECONDS``, wait for every delivery, print, stop the readers."""
        fan_out = sum(1 / share for _, share in readers)
        deliveries = Deliveries()
        ready = [asyncio.Event() for _ in readers]
        tasks = [
            asyncio.create_task(reader(deliveries, event))
            for (reader, _), event in zip(readers, ready, strict=True)
        ]
        try:
            await eventually(lambda: all(event.is_set() for event in ready), timeout=120)
            await paced(self.publisher, self.build(WARMUP, 0), rate, deliveries)
            await eventually(lambda: len(deliveries.latencies) >= round(WARMUP * fan_out), 120)
            batch = self.build(rate * SECONDS, WARMUP)
            deliveries.reset()
            began = time.monotonic()
            cpu = cpu_seconds(self.gateway.process), cpu_seconds(psutil.Process())
            published = await paced(self.publisher, batch, rate, deliveries)
            expected = round(len(batch) * fan_out)
            await eventually(lambda: len(deliveries.latencies) >= expected, timeout=300)
            assert len(deliveries.latencies) == expected
            elapsed = time.monotonic() - began
            gateway_cpu = (cpu_seconds(self.gateway.process) - cpu[0]) / elapsed
            clients_cpu = (cpu_seconds(psutil.Process()) - cpu[1]) / elapsed
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        cuts = statistics.quantiles(deliveries.latencies, n=100)
        print(
            f"  {label:<40} {len(batch) / published:>6,.0f} events/s"
            f"  {expected / (deliveries.last - began):>8,.0f} deliveries/s"
            f"  p50 {cuts[49] * 1000:7.1f} ms  p99 {cuts[98] * 1000:7.1f} ms"
            f"  max {max(deliveries.latencies) * 1000:7.1f} ms"
            f"  CPU gateway {gateway_cpu:4.0%} here {clients_cpu:4.0%}"
        )


async def dropped(gateway: GatewayProcess) -> float:
    """Subscribers the gateway process has dropped, from its ``/metrics``."""
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False) as client:
        text = (await client.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ledgerbus_gateway_stream_dropped_total"
    )


async def test_sse_fan_out_vs_a_raw_consumer(
    stack: StackUnderTest,
    isolation: Isolation,
    registry_url: str,
    registry: RegistryClient,
    tmp_path: Path,
) -> None:
    tenant = isolation.tenant_id
    subjects = [f"s-{n}" for n in range(SUBJECTS)]

    def build(count: int, start: int) -> list[Envelope[Any]]:
        return events(tenant, count, subjects=subjects, types=("agent.heartbeat",), start=start)

    bootstrap = stack.endpoints.kafka_bootstrap
    await ensure_topics(bootstrap, isolation.topic_prefix)
    serializer = EventSerializer(CATALOG, registry, isolation.topic_prefix)
    async with (
        gateway_process(stack, isolation, registry_url, tmp_path / "gateway.log") as gateway,
        Publisher(bootstrap, serializer, source="bench") as publisher,
    ):
        pool = await asyncpg.create_pool(isolation.database_url, min_size=1, max_size=2)
        try:
            key = await ApiKeyStore(pool).create(tenant_id=tenant, role="viewer", tier="enterprise")
        finally:
            await pool.close()
        async with httpx.AsyncClient(
            base_url=gateway.url,
            headers={"Authorization": f"Bearer {key.token}"},
            limits=httpx.Limits(max_connections=None),
            timeout=httpx.Timeout(30.0, read=None),
            trust_env=False,
        ) as client:
            print(
                f"\nSSE fan-out: {SECONDS} s at each rate, after {WARMUP} warm-up events;"
                " CPU: the gateway process, and this one (publisher + subscribers)"
            )
            deserializer = EventDeserializer(CATALOG, registry)
            raw = raw_reader(bootstrap, isolation.topic_prefix, deserializer)
            bench = Bench(gateway, publisher, build)
            await bench.run("baseline: raw aiokafka consumer", RATE, [(raw, 1)])
            every = [(sse_reader(client, {}), 1)]
            await bench.run("baseline: 1 subscriber, every event", RATE, every)
            share = SUBSCRIBERS // SUBJECTS
            filtered = [
                (sse_reader(client, {"subject": subjects[n % SUBJECTS]}), SUBJECTS)
                for n in range(SUBSCRIBERS)
            ]
            label = f"{SUBSCRIBERS} subscribers, 1/{SUBJECTS} each ({share}/event)"
            await bench.run(label, RATE, filtered)
            broadcast = [(sse_reader(client, {}), 1) for _ in range(SUBSCRIBERS)]
            await bench.run(f"{SUBSCRIBERS} subscribers, every event", BROADCAST_RATE, broadcast)
        assert await dropped(gateway) == 0
