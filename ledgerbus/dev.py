"""``ledgerbus dev``: the whole system on one machine, in the foreground.

Stage 1 starts the servers (embedded or probed external) in parallel; stages 2
and 3 the ledgerbus processes (gateway, then archiver and stream processors),
each a child running its own ``ledgerbus`` command with the stage-1 endpoints
in its environment, exactly as in production. With ``--with-agents`` stage 4
runs one ``ledgerbus agent run`` per built-in agent for the ``default`` tenant;
with no LLM configured (``LEDGERBUS_LLM_BASE_URL`` unset) stage 3 also starts
``ledgerbus llm-stub`` and the agents call that.
Ctrl-C or SIGTERM stops everything in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import start_http_server

from ledgerbus.admin_key import TENANT as ADMIN_TENANT
from ledgerbus.admin_key import ensure_admin_key, key_file
from ledgerbus.discovery import state_file, write_state
from ledgerbus.embedded.lock import DataDirLock
from ledgerbus.embedded.ports import claim_port, free_port
from ledgerbus.embedded.process import ChildProcess
from ledgerbus.embedded.service import RestartableProcessService
from ledgerbus.embedded.stack import Endpoints, infrastructure
from ledgerbus.probes import http_probe
from ledgerbus.settings import Settings
from ledgerbus.supervisor import Service, Started, Supervisor
from producers.topics import ensure_topics


def ledgerbus_process(
    name: str,
    args: list[str],
    *,
    endpoints: Endpoints,
    extra_env: dict[str, str],
    url: str,
    ready_path: str,
    log_dir: Path,
    death_signal: signal.Signals = signal.SIGTERM,
) -> RestartableProcessService:
    """A ``ledgerbus <args>`` child that uses the supervisor's servers.

    ``death_signal`` is what the child gets if the supervisor itself dies.
    """
    env = {**os.environ, **endpoints.as_env(), **extra_env}
    process = ChildProcess(
        name,
        [sys.executable, "-m", "ledgerbus", *args],
        log_path=log_dir / f"{name}.log",
        death_signal=death_signal,
        env=env,
    )
    return RestartableProcessService(name, process, http_probe(url + ready_path), url)


#: What the agents call when no LLM is configured: the stub's model, priced in
#: consumers/pricing.yaml so its cost records carry real micro-USD amounts.
STUB_MODEL = "stub-model"
#: Tenant of the bootstrap admin key, so the printed key sees the agents' work.
AGENTS_TENANT = ADMIN_TENANT


def llm_configured() -> bool:
    """Whether the user pointed agents at an LLM (else they get the local stub)."""
    return bool(os.environ.get("LEDGERBUS_LLM_BASE_URL"))


def stub_env(base_url: str) -> dict[str, str]:
    """The ``LEDGERBUS_LLM_*`` settings that send an agent's calls to the stub at ``base_url``."""
    return {
        "LEDGERBUS_LLM_BASE_URL": base_url,
        "LEDGERBUS_LLM_PROVIDER": "stub",
        "LEDGERBUS_LLM_MODEL": STUB_MODEL,
    }


def builtin_agent_names() -> list[str]:
    from consumers.llm_agent import builtin_definitions

    return sorted(builtin_definitions())


@dataclass(frozen=True)
class DevStack:
    supervisor: Supervisor
    endpoints: Endpoints
    gateway_url: str
    llm_stub_url: str | None
    """Base URL (…/v1) of the stub the agents call, if the stack started one."""


def build_supervisor(
    settings: Settings, on_started: Callable[[Started], None], *, with_agents: bool = False
) -> DevStack:
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    servers, endpoints = infrastructure(settings)
    port = claim_port(
        settings.gateway_port, setting="LEDGERBUS_GATEWAY_PORT", host=settings.gateway_host
    )
    gateway_url = f"http://{settings.gateway_host}:{port}"
    serve_registry = not settings.schema_registry_url
    if serve_registry:  # dev mode: the gateway hosts a Confluent-compatible registry
        endpoints = replace(endpoints, schema_registry_url=f"{gateway_url}/registry")
    # Dev receivers run on this machine: let webhooks reach loopback (production
    # keeps the SSRF guard's default of refusing it) unless the user chose. The
    # gateway checks the same rule when an endpoint is registered.
    loopback = (
        {}
        if "LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS" in os.environ
        else {"LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128"}
    )
    gateway = ledgerbus_process(
        "gateway",
        ["gateway"],
        endpoints=endpoints,
        extra_env={
            "LEDGERBUS_GATEWAY_PORT": str(port),
            "LEDGERBUS_GATEWAY_HOST": settings.gateway_host,
            "LEDGERBUS_SERVE_SCHEMA_REGISTRY": "true" if serve_registry else "false",
            **loopback,
        },
        url=gateway_url,
        ready_path="/readyz",
        log_dir=log_dir,
    )
    # Stage 3: the archiver and the stream processors need the registry the
    # gateway serves; stopping in reverse order lets them drain before the
    # gateway and the broker go.
    # If the supervisor dies, the broker goes too, and faust's consumer thread
    # can hang for minutes trying to leave the group; the stream processors are
    # built to survive SIGKILL (decisions are idempotent), so they get that.
    stage3: list[Service] = []
    for name, death_signal, extra_env in (
        ("archiver", signal.SIGTERM, {}),
        ("streams", signal.SIGKILL, loopback),
    ):
        stage3.append(metered_process(name, [name], endpoints, extra_env, log_dir, death_signal))
    stages: list[list[Service]] = [servers, [gateway], stage3]
    stub_url = None
    if with_agents:
        llm_env: dict[str, str] = {}
        if not llm_configured():
            stub_port = free_port()
            stub = ledgerbus_process(
                "llm-stub",
                ["llm-stub", "--port", str(stub_port)],
                endpoints=endpoints,
                extra_env={},
                url=f"http://127.0.0.1:{stub_port}",
                ready_path="/v1/models",
                log_dir=log_dir,
            )
            stage3.append(stub)
            stub_url = f"{stub.endpoint}/v1"
            llm_env = stub_env(stub_url)
        # Agents resume their runs from the journal after a SIGKILL (leases
        # expire), so, like the stream processors, they need no clean exit.
        stages.append(
            [
                metered_process(
                    name,
                    ["agent", "run", name, "--tenant", AGENTS_TENANT],
                    endpoints,
                    llm_env,
                    log_dir,
                    signal.SIGKILL,
                )
                for name in builtin_agent_names()
            ]
        )
    return DevStack(Supervisor(stages, on_started=on_started), endpoints, gateway_url, stub_url)


def metered_process(
    name: str,
    args: list[str],
    endpoints: Endpoints,
    extra_env: dict[str, str],
    log_dir: Path,
    death_signal: signal.Signals,
) -> RestartableProcessService:
    """A ledgerbus process whose ``/metrics`` (on a free port) says it is ready."""
    metrics_port = free_port()
    return ledgerbus_process(
        name,
        [*args, "--metrics-port", str(metrics_port)],
        endpoints=endpoints,
        extra_env=extra_env,
        url=f"http://127.0.0.1:{metrics_port}",
        ready_path="/metrics",
        log_dir=log_dir,
        death_signal=death_signal,
    )


def _print_started(started: Started) -> None:
    pid = f"pid {started.pid}" if started.pid else "external"
    print(
        f"  {started.name:<16} {started.endpoint:<52} ready in {started.seconds:5.2f}s  ({pid})",
        flush=True,
    )


async def run_dev(settings: Settings, *, with_agents: bool = False) -> int:
    """Run until a signal or an unrecoverable failure; return the exit code."""
    data_dir = settings.data_dir.resolve()
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        return await _run_locked(settings, data_dir, with_agents)
    finally:
        state_file(data_dir).unlink(missing_ok=True)
        lock.release()


async def _run_locked(settings: Settings, data_dir: Path, with_agents: bool) -> int:
    began = time.monotonic()
    stack = build_supervisor(settings, _print_started, with_agents=with_agents)
    supervisor, endpoints, gateway_url = stack.supervisor, stack.endpoints, stack.gateway_url
    metrics_port = claim_port(settings.metrics_port, setting="LEDGERBUS_METRICS_PORT")
    start_http_server(metrics_port, addr="127.0.0.1")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    print(f"ledgerbus dev: starting in {data_dir}", flush=True)
    starting = asyncio.create_task(supervisor.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        print("ledgerbus dev: stopped during start-up", flush=True)
        return 130
    starting.result()  # re-raise a start-up failure
    await ensure_topics(endpoints.kafka_bootstrap, settings.topic_prefix)
    admin_key = await ensure_admin_key(endpoints.database_url, data_dir, tier="enterprise")

    pids = {service.name: service.pid for service in supervisor.services}
    write_state(data_dir, endpoints, gateway_url, pids)
    print(f"ready in {time.monotonic() - began:.2f}s", flush=True)
    print(f"Gateway:  {gateway_url}  (API docs {gateway_url}/docs)", flush=True)
    print(f"Admin key (tenant {ADMIN_TENANT!r}, also in {key_file(data_dir)}):")
    print(f"          {admin_key}")
    print(f"Metrics:  {gateway_url}/metrics, supervisor http://127.0.0.1:{metrics_port}/metrics")
    print(f"Logs:     {data_dir / 'logs'}")
    if stack.llm_stub_url is not None:
        print(f"no LLM configured: agents use the local stub at {stack.llm_stub_url}")
        print("          (set LEDGERBUS_LLM_BASE_URL, _API_KEY, _MODEL for a real one)")
    print("Press Ctrl-C to stop.", flush=True)

    watching = asyncio.create_task(supervisor.watch())
    await asyncio.wait({watching, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if watching.done():
        print(f"ledgerbus dev: {watching.result()}; shutting down", file=sys.stderr, flush=True)
        code = 1
    else:
        watching.cancel()
    print("ledgerbus dev: stopping", flush=True)
    await supervisor.stop()
    stopping.cancel()
    print("ledgerbus dev: stopped", flush=True)
    return code
