"""``ledgerbus dev`` as a user runs it: real processes, real signals, real servers."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
import redis.asyncio as aioredis

from ledgerbus.embedded.ports import free_port
from ledgerbus.embedded.postgres import EmbeddedPostgres
from ledgerbus.probes import kafka_probe
from ledgerbus.supervisor import Supervisor
from tests.support.devproc import DevProcess, wait_gone

pytestmark = pytest.mark.slow


def descendants(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def printed_admin_key(dev: DevProcess) -> str:
    """The bootstrap admin key from ``ledgerbus dev``'s banner."""
    lines = dev.output.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("Admin key"))
    return lines[heading + 1].strip()


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevProcess]:
    process = DevProcess(tmp_path)
    yield process
    if process.popen and process.popen.poll() is None:
        process.stop()


async def test_starts_answers_and_stops_leaving_nothing(dev: DevProcess) -> None:
    dev.start()
    state = dev.wait_ready()
    assert dev.popen is not None
    tree = descendants(dev.popen.pid)
    for name in ("kafka", "postgres", "redis", "gateway", "archiver", "streams"):
        assert state["pids"][name] in tree, f"{name} is not a child of ledgerbus dev"

    async with httpx.AsyncClient(base_url=state["gateway_url"]) as client:
        ready = (await client.get("/readyz")).json()
        assert ready["status"] == "ready"
        assert {name: c["status"] for name, c in ready["components"].items()} == {
            "kafka": "up",
            "postgres": "up",
            "redis": "up",
        }
        assert ready["components"]["postgres"]["endpoint"] == state["database_url"]
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        key = printed_admin_key(dev)
        keys = await client.get("/v1/api-keys", headers={"Authorization": f"Bearer {key}"})
        assert keys.status_code == 200, keys.text
        assert [k["role"] for k in keys.json()] == ["admin"]
        assert (dev.data_dir / "admin-api-key").stat().st_mode & 0o777 == 0o600
        metrics = (await client.get("/metrics")).text
        assert 'ledgerbus_http_requests_total{method="GET",route="/readyz",status="200"}' in metrics

    await kafka_probe(state["kafka_bootstrap"])()
    conn = await asyncpg.connect(state["database_url"])
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
    cache = aioredis.from_url(state["redis_url"])
    assert await cache.ping()
    await cache.aclose()

    assert dev.stop(signal.SIGTERM) == 0
    assert wait_gone(tree) == []
    assert "ledgerbus dev: stopped" in dev.output
    assert not (dev.data_dir / "dev.json").exists()


async def test_postgres_and_redis_data_survive_restart(dev: DevProcess, tmp_path: Path) -> None:
    dev.start()
    state = dev.wait_ready()
    conn = await asyncpg.connect(state["database_url"])
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
    await conn.close()
    client = aioredis.from_url(state["redis_url"])
    await client.set("kept", "still here")
    await client.aclose()
    first_key = printed_admin_key(dev)
    assert dev.stop() == 0

    again = DevProcess(tmp_path)
    again.start()
    state = again.wait_ready()
    try:
        assert printed_admin_key(again) == first_key  # keys survive a restart
        conn = await asyncpg.connect(state["database_url"])
        assert await conn.fetchval("SELECT v FROM kept") == "still here"
        await conn.close()
        client = aioredis.from_url(state["redis_url"])
        assert await client.get("kept") == b"still here"
        await client.aclose()
    finally:
        assert again.stop() == 0


async def test_sigkill_leaves_no_orphans_and_next_start_works(
    dev: DevProcess, tmp_path: Path
) -> None:
    dev.start()
    state = dev.wait_ready()
    conn = await asyncpg.connect(state["database_url"])
    await conn.execute("CREATE TABLE before_kill (v int); INSERT INTO before_kill VALUES (7)")
    await conn.close()
    assert dev.popen is not None
    tree = descendants(dev.popen.pid)
    assert len(tree) >= 4

    dev.stop(signal.SIGKILL)
    assert wait_gone(tree) == [], "servers outlived a SIGKILLed ledgerbus dev"

    again = DevProcess(tmp_path)
    again.start()
    state = again.wait_ready()
    try:
        conn = await asyncpg.connect(state["database_url"])
        assert await conn.fetchval("SELECT v FROM before_kill") == 7
        await conn.close()
    finally:
        assert again.stop() == 0


async def test_second_dev_on_same_data_dir_fails_fast(dev: DevProcess, tmp_path: Path) -> None:
    dev.start()
    dev.wait_ready()
    second = DevProcess(tmp_path)
    second.start()
    assert second.run_to_exit(timeout=10) != 0
    assert "is in use by another ledgerbus dev" in second.output
    assert dev.popen is not None and dev.popen.poll() is None, "the first dev was disturbed"
    assert dev.stop() == 0


async def test_port_in_use_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dev = DevProcess(tmp_path, env={"LEDGERBUS_REDIS_PORT": str(port)})
        dev.start()
        assert dev.run_to_exit() == 2
    assert f"LEDGERBUS_REDIS_PORT={port}: port {port} on 127.0.0.1 is already in use" in dev.output
    assert not (tmp_path / ".ledgerbus" / "postgres").exists(), "a failed start created data"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LEDGERBUS_DATABASE_URL", "mysql://nope"),
        ("LEDGERBUS_KAFKA_BOOTSTRAP", "localhost"),
        ("LEDGERBUS_REDIS_URL", "http://x"),
        ("LEDGERBUS_GATEWAY_PORT", "70000"),
    ],
)
async def test_bad_setting_is_named(tmp_path: Path, variable: str, value: str) -> None:
    dev = DevProcess(tmp_path, env={variable: value})
    dev.start()
    assert dev.run_to_exit() == 2
    first_line = dev.output.strip().splitlines()[0]
    assert first_line.startswith(f"error: {variable}:"), dev.output
    assert "Traceback" not in dev.output


async def test_external_postgres_replaces_embedded_one(tmp_path: Path) -> None:
    external = EmbeddedPostgres(free_port(), tmp_path / "external-pg", tmp_path / "external-logs")
    outside = Supervisor([[external]])
    await outside.start()
    try:
        dev = DevProcess(tmp_path / "work", env={"LEDGERBUS_DATABASE_URL": external.url})
        dev.workdir.mkdir()
        dev.start()
        state = dev.wait_ready()
        try:
            assert state["database_url"] == external.url
            assert state["pids"]["postgres"] is None
            assert not (dev.data_dir / "postgres").exists()
            assert dev.popen is not None
            names = {psutil.Process(pid).name() for pid in descendants(dev.popen.pid)}
            assert "postgres" not in names
            async with httpx.AsyncClient() as client:
                ready = (await client.get(f"{state['gateway_url']}/readyz")).json()
            assert ready["components"]["postgres"] == {
                "status": "up",
                "endpoint": external.url,
                "required": True,
                "latency_ms": ready["components"]["postgres"]["latency_ms"],
            }
        finally:
            assert dev.stop() == 0
        # the external server is still ours to stop: dev did not touch it
        assert external.exited() is None
        await asyncio.wait_for(external.probe(), 5)
    finally:
        await outside.stop()


async def test_a_killed_ledgerbus_process_is_restarted(dev: DevProcess) -> None:
    dev.start()
    state = dev.wait_ready()
    old = state["pids"]["gateway"]
    psutil.Process(old).kill()
    assert wait_gone([old]) == []

    async def gateway_ready() -> int:
        assert dev.popen is not None
        async with httpx.AsyncClient(base_url=state["gateway_url"]) as client:
            for _ in range(200):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        gateways = [
            child.pid
            for child in psutil.Process(dev.popen.pid).children()
            if "gateway" in child.cmdline()
        ]
        assert len(gateways) == 1
        return gateways[0]

    assert await gateway_ready() != old
    assert "gateway exited with code -9; restarting" in dev.output
    assert dev.stop(signal.SIGTERM) == 0
