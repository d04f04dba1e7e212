"""Readiness probes that talk each server's own protocol.

A probe returns when the server answers a real request (Kafka metadata,
``SELECT 1``, ``PING``, HTTP 200) and raises otherwise. The supervisor polls
them at start-up; the gateway's ``/readyz`` calls them on every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

Probe = Callable[[], Awaitable[None]]


async def _port_open(host: str, port: int, timeout: float) -> None:
    """A plain TCP connect first, so polling a starting broker does not make
    aiokafka log a connection error per attempt."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.close()
    await writer.wait_closed()


def kafka_probe(bootstrap: str, timeout: float = 2.0) -> Probe:
    host, _, port = bootstrap.split(",", maxsplit=1)[0].strip().rpartition(":")

    async def probe() -> None:
        await _port_open(host, int(port), timeout)
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000)
        )
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            if not cluster.get("brokers"):
                raise ConnectionError("Kafka metadata lists no brokers")
        finally:
            await admin.close()

    return probe


def postgres_probe(url: str, timeout: float = 2.0) -> Probe:
    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            if await conn.fetchval("SELECT 1", timeout=timeout) != 1:
                raise ConnectionError("SELECT 1 did not return 1")
        finally:
            await conn.close()

    return probe


def redis_probe(url: str, timeout: float = 2.0) -> Probe:
    async def probe() -> None:
        client = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            if not await client.ping():
                raise ConnectionError("PING was not answered")
        finally:
            await client.aclose()

    return probe


def http_probe(url: str, timeout: float = 2.0) -> Probe:
    async def probe() -> None:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url)
            response.raise_for_status()

    return probe


async def wait_until_ready(
    probe: Probe,
    *,
    timeout: float,
    interval: float = 0.05,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Poll ``probe`` until it passes; fail early if ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("process exited before it was ready")
        try:
            await probe()
            return
        except Exception as exc:
            last_error = exc
        await asyncio.sleep(interval)
    raise TimeoutError(f"not ready after {timeout:.0f}s: {last_error!r}")
