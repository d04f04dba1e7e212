"""Restarting ``ledgerbus dev`` loses no budget, reservation, pending approval,
webhook subscription or pending webhook retry.

The embedded broker forgets everything on restart, so this is the test that
the state that decides lives in PostgreSQL: after the restart the budget
processor still counts the reservation made before it, and a decision on an
approval requested before it still finds it pending.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from streams.approvals import get_approval
from streams.budgets import budget_status
from tests.support.archive import eventually
from tests.support.cli import run_cli
from tests.support.devproc import DevProcess
from tests.support.receiver import Answer, serve_receiver

TENANT = "acme"
PROJECT = "website"


#: Retries every 2 s for a minute: one is surely pending while dev restarts.
FAST_RETRIES = {"LEDGERBUS_WEBHOOK_RETRY_SCHEDULE": ",".join(["2s"] * 30)}


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevProcess]:
    process = DevProcess(tmp_path, FAST_RETRIES)
    yield process
    if process.popen and process.popen.poll() is None:
        process.stop()


async def publish(dev: DevProcess, event_type: str, subject: str, data: dict[str, Any]) -> None:
    result = await run_cli(
        [
            "publish",
            event_type,
            "--tenant",
            TENANT,
            "--subject",
            subject,
            "--data",
            json.dumps(data),
        ],
        {"LEDGERBUS_DATA_DIR": str(dev.data_dir)},
    )
    assert result.returncode == 0, result.stderr


def run_request(run_id: str, estimate: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "project_id": PROJECT,
        "agent_name": "developer",
        "task": "ship it",
        "risk_level": "low",
        "cost_estimate_micros": estimate,
    }


async def decision_of(conn: asyncpg.Connection, run_id: str) -> str | None:
    value = await conn.fetchval(
        "SELECT decision FROM budget_runs WHERE tenant_id = $1 AND run_id = $2", TENANT, run_id
    )
    return None if value is None else str(value)


async def test_budgets_and_pending_approvals_survive_a_restart(
    dev: DevProcess, tmp_path: Path
) -> None:
    dev.start()
    state = dev.wait_ready()
    await publish(dev, "budget.set", PROJECT, {"project_id": PROJECT, "amount_micros": 1_000})
    await publish(dev, "agent.run_requested", "run-1", run_request("run-1", 600))
    expires = datetime.now(UTC) + timedelta(hours=1)
    await publish(
        dev,
        "approval.requested",
        "appr-1",
        {
            "approval_id": "appr-1",
            "run_id": "run-1",
            "agent_name": "developer",
            "action": "deploy",
            "risk_level": "high",
            "required_permission": "approvals:approve",
            "expires_at": expires.isoformat(),
        },
    )
    conn = await asyncpg.connect(state["database_url"])
    try:

        async def settled() -> bool:
            approval = await get_approval(conn, TENANT, "appr-1")
            return await decision_of(conn, "run-1") == "accepted" and approval is not None

        await eventually(settled, timeout=60)
    finally:
        await conn.close()
    assert dev.stop() == 0

    again = DevProcess(tmp_path, FAST_RETRIES)
    again.start()
    state = again.wait_ready()
    try:
        conn = await asyncpg.connect(state["database_url"])
        try:
            before = await budget_status(conn, TENANT, PROJECT, datetime.now(UTC))
            assert (before.amount_micros, before.reserved_micros) == (1_000, 600)
            approval = await get_approval(conn, TENANT, "appr-1")
            assert approval is not None and approval.status == "pending"

            # 600 reserved before the restart + 500 > 1,000: only a processor that
            # remembers the reservation rejects this.
            await publish(again, "agent.run_requested", "run-2", run_request("run-2", 500))
            await publish(
                again,
                "approval.decision_submitted",
                "appr-1",
                {
                    "approval_id": "appr-1",
                    "decider": "maria",
                    "decider_permissions": ["approvals:approve"],
                    "verdict": "approve",
                },
            )

            async def decided() -> bool:
                approval = await get_approval(conn, TENANT, "appr-1")
                return (
                    await decision_of(conn, "run-2") is not None
                    and approval is not None
                    and approval.status != "pending"
                )

            await eventually(decided, timeout=60)
            assert await decision_of(conn, "run-2") == "rejected"
            approval = await get_approval(conn, TENANT, "appr-1")
            assert approval is not None and approval.status == "approved"
        finally:
            await conn.close()
    finally:
        assert again.stop() == 0


async def test_a_pending_webhook_retry_survives_a_restart(dev: DevProcess, tmp_path: Path) -> None:
    async with serve_receiver() as receiver:
        receiver.answer("/hook", Answer(503), times=10_000)  # down until told otherwise
        dev.start()
        dev.wait_ready()
        created = await run_cli(
            [
                "webhooks",
                "create",
                "--tenant",
                TENANT,
                "--url",
                receiver.url("/hook"),
                "--types",
                "budget.*",
            ],
            # dev lets its worker deliver to loopback; the CLI checks URLs itself
            {
                "LEDGERBUS_DATA_DIR": str(dev.data_dir),
                "LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            },
        )
        assert created.returncode == 0, created.stderr
        secret = json.loads(created.stdout)["secret"]
        receiver.expect("/hook", secret)

        async def failing() -> bool:
            await publish(dev, "budget.set", PROJECT, {"project_id": PROJECT, "amount_micros": 5})
            await asyncio.sleep(1)
            return bool(receiver.received("/hook"))

        await eventually(failing, timeout=60, interval=0.5)
        first = receiver.received("/hook")[0]
        assert dev.stop() == 0

        receiver.heal("/hook")
        again = DevProcess(tmp_path, FAST_RETRIES)
        again.start()
        again.wait_ready()
        try:
            await eventually(
                lambda: any(r.webhook_id == first.webhook_id for r in receiver.delivered("/hook")),
                timeout=60,
            )
        finally:
            assert again.stop() == 0
