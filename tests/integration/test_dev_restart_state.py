"""Restarting ``ledgerbus dev`` loses no budget, reservation or pending approval.

The embedded broker forgets everything on restart, so this is the test that
the state that decides lives in PostgreSQL: after the restart the budget
processor still counts the reservation made before it, and a decision on an
approval requested before it still finds it pending.
"""

from __future__ import annotations

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

TENANT = "acme"
PROJECT = "website"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevProcess]:
    process = DevProcess(tmp_path)
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

    again = DevProcess(tmp_path)
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
