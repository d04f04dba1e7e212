"""``ledgerbus demo`` and ``ledgerbus dev --with-agents`` as a user runs them (issue 7).

One ``ledgerbus dev --with-agents`` (no LLM configured: the agents call the
``ledgerbus llm-stub`` child) serves the module; the demo runs against it and
its printed timeline is checked against the event store. The first test lets
the demo start (and stop) a stack of its own, before the module's stack runs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from standardwebhooks import Webhook

from ledgerbus.demo import serve_receiver
from ledgerbus.embedded.ports import free_port
from tests.support.archive import eventually
from tests.support.cli import run_cli
from tests.support.devproc import DevProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

AGENTS = {"developer", "qa-tester", "devops-engineer", "ux-designer", "security-auditor"}
EVENT = re.compile(r"\[([a-z_.]+) ([0-9a-f-]{36})\]")
LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3})Z +\+\s*\d+\.\d\ds  ")
#: What one demo shows: the Developer → QA chain, its webhook, and the rejected run.
STORY = Counter(
    {
        "budget.set": 2,
        "webhook.subscribed": 1,
        "agent.run_requested": 3,
        "agent.run_accepted": 2,
        "agent.started": 2,
        "cost.recorded": 2,
        "agent.handoff": 1,
        "agent.completed": 2,
        "approval.requested": 1,
        "approval.decision_submitted": 1,
        "approval.approved": 1,
        "webhook.delivery_succeeded": 1,
        "agent.run_rejected": 1,
        "webhook.deleted": 1,
    }
)


def no_llm(env: dict[str, str]) -> dict[str, str]:
    """``env`` without any LLM configuration: the stub is what the agents get."""
    return {name: value for name, value in env.items() if not name.startswith("LEDGERBUS_LLM_")}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevProcess, dict[str, Any]]]:
    process = DevProcess(tmp_path_factory.mktemp("demo-dev"))
    process.env = no_llm(process.env)
    process.start("--with-agents")
    try:
        yield process, process.wait_ready(timeout=180)
    finally:
        if process.popen is not None and process.popen.poll() is None:
            assert process.stop(timeout=90) == 0, process.output


def admin_key(process: DevProcess) -> str:
    return (process.data_dir / "admin-api-key").read_text().strip()


async def demo(process: DevProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``ledgerbus demo`` from the dev's data dir (it finds the gateway and key there)."""
    env = {"LEDGERBUS_DATA_DIR": str(process.data_dir)}
    return await run_cli(["demo", *args], env, timeout=180)


async def story_events(database_url: str) -> int:
    """How many events the story publishes are in the store (heartbeats and checkpoints
    keep coming on their own)."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM events WHERE type = ANY($1)", sorted(STORY)
        )
        return count
    finally:
        await conn.close()


def test_demo_starts_and_stops_a_stack_of_its_own_when_none_answers(
    tmp_path: Path,
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = no_llm(
        {
            **os.environ,
            "LEDGERBUS_DATA_DIR": str(tmp_path / "no-stack-here"),
            "LEDGERBUS_GATEWAY_PORT": str(free_port()),
            "TMPDIR": str(scratch),  # where the demo makes its stack's directory
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "ledgerbus", "demo"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "starting `ledgerbus dev --with-agents`" in result.stdout
    assert "rejected: budget_exceeded" in result.stdout
    assert "stopping the stack it started" in result.stdout
    assert list(scratch.iterdir()) == [], "the demo's stack directory is removed"
    left = [p.pid for p in psutil.process_iter(["cwd"]) if str(scratch) in (p.info["cwd"] or "")]
    assert left == [], "no process of the demo's stack outlives it"


async def test_dev_with_agents_runs_the_builtin_agents_on_the_stub(
    dev: tuple[DevProcess, dict[str, Any]],
) -> None:
    process, state = dev
    assert process.popen is not None
    children = {p.pid for p in psutil.Process(process.popen.pid).children(recursive=True)}
    for name in (*AGENTS, "llm-stub"):
        assert state["pids"][name] in children, f"{name} is not a child of ledgerbus dev"
    [stub_url] = re.findall(
        r"no LLM configured: agents use the local stub at (\S+)", process.output
    )

    async with httpx.AsyncClient(timeout=10) as client:
        models = (await client.get(f"{stub_url}/models")).json()
        assert [model["id"] for model in models["data"]] == ["stub-model"]
        listed: set[str] = set()

        async def all_registered() -> bool:
            answer = await client.get(
                f"{state['gateway_url']}/v1/agents",
                headers={"Authorization": f"Bearer {admin_key(process)}"},
            )
            assert answer.status_code == 200, answer.text
            listed.update(
                agent["agent_name"] for agent in answer.json()["items"] if agent["instances"]
            )
            return listed >= AGENTS

        await eventually(all_registered, 60, interval=0.5)


async def test_demo_exits_0_and_its_timeline_matches_the_store(
    dev: tuple[DevProcess, dict[str, Any]],
) -> None:
    process, state = dev
    projects = set()
    for _ in range(2):  # a fresh project each time: the story repeats on one stack
        result = await demo(process)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "using the local OpenAI-compatible stub (no LLM configured)" in out
        assert "rejected: budget_exceeded" in out
        assert "GET /v1/audit/verify ok" in out
        projects |= set(re.findall(r"project (demo-[0-9a-f]{8})\b", out))

        printed: dict[str, str] = {}
        first_time: dict[str, str] = {}  # a line's time is that of its first event
        for line in out.splitlines():
            found = EVENT.findall(line)
            if not found:
                continue
            at = LINE.match(line)
            assert at is not None, f"no UTC time on {line!r}"
            first_time[found[0][1]] = at[1]
            printed.update({event_id: event_type for event_type, event_id in found})
        assert Counter(printed.values()) == STORY, out

        conn = await asyncpg.connect(state["database_url"])
        try:
            rows = await conn.fetch(
                "SELECT event_id::text AS id, type, time FROM events "
                "WHERE tenant_id = 'default' AND event_id = ANY($1::uuid[])",
                list(printed),
            )
        finally:
            await conn.close()
        assert {row["id"]: row["type"] for row in rows} == printed
        stored_time = {row["id"]: row["time"].astimezone(UTC) for row in rows}
        for event_id, shown in first_time.items():
            assert stored_time[event_id].strftime("%H:%M:%S.%f")[:-3] == shown
    assert len(projects) == 2


async def test_demo_refuses_a_bad_key_or_a_silent_gateway_and_changes_nothing(
    dev: tuple[DevProcess, dict[str, Any]],
) -> None:
    process, state = dev
    before = await story_events(state["database_url"])

    refused = await demo(process, "--api-key", "lb_not_a_key")
    assert refused.returncode == 2
    assert "error: the gateway at" in refused.stderr and "refused the API key (401)" in (
        refused.stderr
    )
    silent = f"http://127.0.0.1:{free_port()}"
    unreachable = await demo(process, "--gateway-url", silent, "--api-key", admin_key(process))
    assert unreachable.returncode == 2
    assert f"error: the gateway at {silent} does not answer /readyz" in unreachable.stderr
    assert refused.stdout.count("\n") <= 1 and unreachable.stdout == ""

    assert await story_events(state["database_url"]) == before


async def test_llm_stub_refuses_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_cli(["llm-stub", "--port", str(port)], {}, timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"error: --port={port}: port {port} on 127.0.0.1 is already in use\n"


async def test_demo_receiver_counts_only_deliveries_signed_with_the_secret() -> None:
    event_id = "0b9b3c5e-2d0c-4a4e-9b1e-3c0f4f6d2a11"
    body = json.dumps({"id": event_id, "type": "agent.completed"})

    def signed(secret: str, msg_id: str) -> dict[str, str]:
        at = datetime.now(UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        }

    secret, other = ("whsec_" + base64.b64encode(os.urandom(24)).decode() for _ in range(2))
    async with serve_receiver() as (receiver, url), httpx.AsyncClient() as client:
        receiver.secret = secret
        forged = await client.post(url, content=body, headers=signed(other, "msg_forged"))
        assert forged.status_code == 401
        assert receiver.delivered({event_id}) is None
        genuine = await client.post(url, content=body, headers=signed(secret, "msg_genuine"))
        assert genuine.status_code == 200
        got = receiver.delivered({event_id})
        assert got is not None and got.webhook_id == "msg_genuine"
