"""``ledgerbus demo``: the story of ``ledgerbus.demo``, against a stack it finds or starts.

Which stack: ``--gateway-url`` (and ``--api-key``) if given; else the
``ledgerbus dev`` of the data dir (its ``dev.json``, else
``LEDGERBUS_GATEWAY_HOST:PORT``) with its admin key file; else, when no gateway
answers there, a ``ledgerbus dev --with-agents`` started in a temporary
directory and stopped at the end. The story needs live ``developer`` and
``qa-tester`` agents in the key's tenant: when the stack runs none, the demo
runs its own, on the local LLM stub unless an LLM is configured.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import click
import httpx

from ledgerbus.admin_key import key_file
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.demo import POLL_SECONDS, DemoFailed, Gateway, Story, Timeline
from ledgerbus.discovery import NoStackFound, resolve_endpoints, state_file
from ledgerbus.embedded.process import ChildProcess
from ledgerbus.settings import Settings

#: The agents the story's chain goes through.
CHAIN = ("developer", "qa-tester")
#: A cold ``ledgerbus dev --with-agents`` on a busy two-core machine.
DEV_START_SECONDS = 240.0
DEV_STOP_SECONDS = 60.0
#: Agents heartbeat every 5 s by default; ``Date`` has whole seconds.
HEARTBEAT_FRESH = timedelta(seconds=20)
#: How long a recently heard agent may take to be heard again before it counts as gone.
HEARTBEAT_WAIT = timedelta(seconds=12)


class StackUnavailable(RuntimeError):
    """No stack the demo can use; the message says what was tried."""


@dataclass(frozen=True)
class Target:
    url: str
    api_key: str
    has_agents: bool
    """Whether the stack starts its own agents (they may not be registered yet)."""


@click.command()
@click.option(
    "--gateway-url",
    default=None,
    help="A running gateway; default: the `ledgerbus dev` of LEDGERBUS_DATA_DIR, else one "
    "the demo starts (and stops).",
)
@click.option(
    "--api-key",
    default=None,
    help="Admin API key of that gateway; default: <data dir>/admin-api-key.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds each step may take before the demo fails.",
)
@clear_errors(StackUnavailable)
def demo(gateway_url: str | None, api_key: str | None, timeout: float) -> None:
    """Run the scripted end-to-end story and print its timeline; exit 1 if a step fails."""
    sys.exit(asyncio.run(run(settings(), gateway_url, api_key, timeout)))


async def run(
    config: Settings, gateway_url: str | None, api_key: str | None, timeout: float
) -> int:
    """The exit code: 0 when every step happened, 1 when one did not."""
    began = time.monotonic()
    try:
        async with AsyncExitStack() as stack:
            target = await stack.enter_async_context(a_stack(config, gateway_url, api_key))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=target.url,
                    headers={"Authorization": f"Bearer {target.api_key}"},
                    timeout=30.0,
                )
            )
            await check_key(client, target.url)
            gateway, timeline = Gateway(client), Timeline(click.echo)
            try:
                await stack.enter_async_context(on_duty(config, gateway, timeline, target, timeout))
                await Story(gateway, timeline, timeout).run()
            except DemoFailed as exc:
                click.echo(f"demo failed: {exc}", err=True)
                raise
            click.echo(f"demo finished in {time.monotonic() - began:.1f}s")
    except DemoFailed:
        return 1
    return 0


async def answers(url: str) -> bool:
    """Whether a ledgerbus gateway at ``url`` says it is ready."""
    try:
        async with httpx.AsyncClient(timeout=3.0) as client:
            return (await client.get(f"{url}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


def default_gateway_url(config: Settings) -> str:
    """The gateway ``ledgerbus dev`` of this data dir wrote down, else the configured address."""
    path = state_file(config.data_dir)
    if path.exists():
        return str(json.loads(path.read_text())["gateway_url"])
    return f"http://{config.gateway_host}:{config.gateway_port}"


def admin_key(config: Settings, given: str | None, url: str) -> str:
    if given:
        return given
    path = key_file(config.data_dir)
    if not path.exists():
        raise StackUnavailable(f"a gateway answers at {url} but there is no {path}: pass --api-key")
    return path.read_text().strip()


@asynccontextmanager
async def a_stack(
    config: Settings, gateway_url: str | None, api_key: str | None
) -> AsyncIterator[Target]:
    url = gateway_url or default_gateway_url(config)
    if await answers(url):
        click.echo(f"ledgerbus demo: using the gateway at {url}")
        yield Target(url, admin_key(config, api_key, url), has_agents=False)
    elif gateway_url is not None:
        raise StackUnavailable(f"the gateway at {gateway_url} does not answer /readyz")
    else:
        async with self_started(url) as target:
            yield target


@asynccontextmanager
async def self_started(tried: str) -> AsyncIterator[Target]:
    """``ledgerbus dev --with-agents`` in a temporary directory, for the block's duration."""
    with scratch_dir("ledgerbus-demo-", "the stack's logs and data") as workdir:
        data_dir = workdir / ".ledgerbus"
        click.echo(
            f"ledgerbus demo: no gateway answers at {tried}; starting `ledgerbus dev "
            f"--with-agents` in {workdir}"
        )
        process = ChildProcess(
            "dev",
            [sys.executable, "-m", "ledgerbus", "dev", "--with-agents"],
            log_path=workdir / "dev.log",
            death_signal=signal.SIGTERM,
            env={
                **os.environ,
                "LEDGERBUS_DATA_DIR": str(data_dir),
                "LEDGERBUS_GATEWAY_PORT": "0",
                "LEDGERBUS_METRICS_PORT": "0",
            },
            cwd=workdir,
        )
        began = time.monotonic()
        process.start()
        try:
            url = await _dev_ready(process, data_dir)
            click.echo(f"ledgerbus demo: stack ready in {time.monotonic() - began:.1f}s at {url}")
            yield Target(url, key_file(data_dir).read_text().strip(), has_agents=True)
        finally:
            click.echo("ledgerbus demo: stopping the stack it started")
            await asyncio.to_thread(process.stop, signal.SIGTERM, DEV_STOP_SECONDS)


@contextmanager
def scratch_dir(prefix: str, what: str) -> Iterator[Path]:
    """A temporary directory, removed after the block; kept (and named) when it failed,
    since it holds the logs that say why."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        click.echo(f"ledgerbus demo: {what} are kept in {path}", err=True)
        raise
    shutil.rmtree(path, ignore_errors=True)


async def _dev_ready(process: ChildProcess, data_dir: Path) -> str:
    """The gateway URL, once ``dev`` has written its state (everything is ready then)."""
    path = state_file(data_dir)
    deadline = time.monotonic() + DEV_START_SECONDS
    while not path.exists():
        if process.exit_code() is not None or time.monotonic() > deadline:
            raise StackUnavailable(
                f"`ledgerbus dev --with-agents` did not start (log {process.log_path}):\n"
                + process.log_tail()
            )
        await asyncio.sleep(0.2)
    return str(json.loads(path.read_text())["gateway_url"])


@dataclass(frozen=True)
class Heard:
    """An agent's latest heartbeat as the directory shows it."""

    at: datetime | None
    status: str
    recent: bool
    """Within ``HEARTBEAT_FRESH`` of the gateway's clock (its ``Date``)."""

    def after(self, before: Heard) -> bool:
        """Whether this heartbeat is a newer one than ``before``."""
        if self.at is None:
            return False
        return before.at is None or self.at > before.at


async def heartbeats(gateway: Gateway) -> dict[str, Heard]:
    """The latest heartbeat of each agent of the chain in the key's tenant."""
    heard = {}
    for name in CHAIN:
        response = await gateway.call(
            "GET", f"/v1/agents/{name}", f"looking up agent {name}", expect=(200, 404)
        )
        view = response.json() if response.status_code == 200 else {}
        at = view.get("last_heartbeat_at")
        last = None if at is None else datetime.fromisoformat(at)
        date = response.headers.get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        recent = last is not None and now - last < HEARTBEAT_FRESH
        heard[name] = Heard(last, view.get("status", "unregistered"), recent)
    return heard


async def heard_since(
    gateway: Gateway, before: dict[str, Heard], names: list[str], seconds: float
) -> dict[str, Heard]:
    """Those of ``names`` that heartbeat after ``before``, waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        now = await heartbeats(gateway)
        heard = {name: now[name] for name in names if now[name].after(before[name])}
        if len(heard) == len(names) or time.monotonic() > deadline:
            return heard
        await asyncio.sleep(POLL_SECONDS)


@asynccontextmanager
async def on_duty(
    config: Settings, gateway: Gateway, timeline: Timeline, target: Target, timeout: float
) -> AsyncIterator[None]:
    """The chain's agents live for the block: the stack's, or ones the demo runs.

    The directory shows an agent ``offline`` only after minutes of silence, and
    a stopped agent says nothing, so live means a heartbeat heard after the demo
    began looking; an agent silent for ``HEARTBEAT_FRESH`` is not waited for.
    """
    before = await heartbeats(gateway)
    async with AsyncExitStack() as stack:
        if not target.has_agents:
            recent = [name for name in CHAIN if before[name].recent]
            if recent:
                timeline.step(
                    f"listening for a heartbeat of {', '.join(recent)} "
                    f"(up to {HEARTBEAT_WAIT.total_seconds():.0f}s)"
                )
            alive = await heard_since(gateway, before, recent, HEARTBEAT_WAIT.total_seconds())
            missing = [name for name in CHAIN if name not in alive]
            if missing:
                await stack.enter_async_context(own_agents(config, gateway, timeline, missing))
        wait = max(timeout, 120.0)  # a cold start registers each agent's keys first
        heard = await heard_since(gateway, before, list(CHAIN), wait)
        silent = [name for name in CHAIN if name not in heard]
        if silent:
            raise DemoFailed(
                f"timed out after {wait:.0f}s waiting for agents {', '.join(silent)} to "
                "heartbeat (GET /v1/agents)"
            )
        timeline.step(
            "agents on duty: " + ", ".join(f"{name} ({heard[name].status})" for name in CHAIN)
        )
        yield


async def check_key(client: httpx.AsyncClient, url: str) -> None:
    """A refused key is a usage error, found before anything is printed or changed."""
    try:
        response = await client.get("/v1/agents", params={"limit": 1})
    except httpx.HTTPError as exc:
        raise StackUnavailable(f"the gateway at {url} did not answer: {exc!r}") from None
    if response.status_code in (401, 403):
        raise StackUnavailable(
            f"the gateway at {url} refused the API key ({response.status_code}): "
            f"{response.json().get('detail')}"
        )


@asynccontextmanager
async def own_agents(
    config: Settings, gateway: Gateway, timeline: Timeline, names: list[str]
) -> AsyncIterator[None]:
    """``ledgerbus agent run`` children for ``names`` in the key's tenant, calling the
    configured LLM or, without one, the stub served by this process."""
    from ledgerbus.dev import llm_configured, metered_process, stub_env
    from ledgerbus.llm_stub import serve
    from ledgerbus.supervisor import StartupError, Supervisor

    keys = await gateway.json("GET", "/v1/api-keys", "finding the API key's tenant")
    tenant = keys[0]["tenant_id"]
    try:
        endpoints = resolve_endpoints(config)
    except NoStackFound as exc:
        raise StackUnavailable(
            f"the stack runs no live {' and '.join(names)} agents, and the demo cannot run "
            f"its own: {exc}"
        ) from None
    with scratch_dir("ledgerbus-demo-agents-", "the agents' logs") as log_dir:
        async with AsyncExitStack() as stack:
            env: dict[str, str] = {}
            if not llm_configured():
                served = await stack.enter_async_context(serve())
                env = stub_env(served.url)
                timeline.step(
                    f"no LLM configured: the demo's agents use the local stub at {served.url}"
                )
            agents = [
                metered_process(
                    name,
                    ["agent", "run", name, "--tenant", tenant],
                    endpoints,
                    env,
                    log_dir,
                    signal.SIGTERM,
                )
                for name in names
            ]
            supervisor = Supervisor([agents])
            try:
                await supervisor.start()
            except StartupError as exc:
                raise DemoFailed(f"starting agents {', '.join(names)}: {exc}") from None
            stack.push_async_callback(supervisor.stop)
            timeline.step(f"started agents {', '.join(names)} for tenant {tenant} (logs {log_dir})")
            yield
