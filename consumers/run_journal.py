"""Durable state of agent runs, shared by every process of an agent.

A run is *claimed* with a lease before its code runs, so two processes of one
agent (competing consumers, or a redelivery after a rebalance) never execute
it at the same time; the lease is renewed while the code runs, so a process
killed mid-run frees it within one lease. A run waiting for an approval holds
no lease: whichever process sees the verdict resumes it. The results of a
run's side effects are kept as *steps*, so a resumed run replays them instead
of calling the LLM, handing off or asking for approval a second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg


class ClaimStatus(StrEnum):
    """Where a claimed run stands in the journal (the runtime's working state;
    what people read is `streams.runs.RunStatus`)."""

    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RunKey:
    tenant_id: str
    agent_name: str
    run_id: str


@dataclass(frozen=True, slots=True)
class AcceptedRecord:
    """The Kafka record of the run's ``agent.run_accepted``, kept to resume the run
    later: the task inside stays sealed until the resuming process opens it."""

    value: bytes
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Claim:
    """A run this process may execute now."""

    key: RunKey
    accepted: AcceptedRecord
    first: bool
    """True when no process ever executed the run before (announce ``agent.started``)."""
    started_at: datetime
    """When the run was first claimed: its duration counts from there, across resumes."""


_CLAIM = """
INSERT INTO agent_runs AS r (
    tenant_id, agent_name, run_id, status, instance_id, lease_until,
    accepted, accepted_topic, accepted_partition, accepted_offset, executions
) VALUES ($1, $2, $3, 'running', $4, now() + $5::interval, $6, $7, $8, $9, 1)
ON CONFLICT (tenant_id, agent_name, run_id) DO UPDATE SET
    instance_id = EXCLUDED.instance_id,
    lease_until = EXCLUDED.lease_until,
    executions = r.executions + 1,
    updated_at = now()
WHERE r.status = 'running' AND (r.lease_until < now() OR r.instance_id = EXCLUDED.instance_id)
RETURNING executions, created_at
"""

#: The first result recorded for a step stands (a replayed step records again).
_RECORD_STEP = """
INSERT INTO agent_run_steps (tenant_id, agent_name, run_id, step, result)
VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING
"""

_RESUME = """
UPDATE agent_runs SET status = 'running', instance_id = $4, lease_until = now() + $5::interval,
    executions = executions + 1, updated_at = now()
WHERE tenant_id = $1 AND agent_name = $2 AND approval_id = $3 AND status = 'waiting'
RETURNING run_id, accepted, accepted_topic, accepted_partition, accepted_offset, created_at
"""


def verdict_step(approval_id: str) -> str:
    return f"verdict:{approval_id}"


class RunJournal:
    """Claims, leases, steps and outcomes of one agent's runs, in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, instance_id: str, lease: timedelta) -> None:
        self.pool = pool
        self.instance_id = instance_id
        self.lease = lease

    async def claim(self, key: RunKey, accepted: AcceptedRecord) -> Claim | None:
        """The run, leased to this process; None if it is finished, waiting for an
        approval, or leased to another live process."""
        row = await self.pool.fetchrow(
            _CLAIM,
            key.tenant_id,
            key.agent_name,
            key.run_id,
            self.instance_id,
            self.lease,
            accepted.value,
            accepted.topic,
            accepted.partition,
            accepted.offset,
        )
        if row is None:
            return None
        return Claim(key, accepted, first=row["executions"] == 1, started_at=row["created_at"])

    async def status(self, key: RunKey) -> tuple[ClaimStatus, str | None] | None:
        """The run's status and the process leasing it, or None for an unknown run."""
        row = await self.pool.fetchrow(
            "SELECT status, instance_id FROM agent_runs "
            "WHERE tenant_id = $1 AND agent_name = $2 AND run_id = $3",
            key.tenant_id,
            key.agent_name,
            key.run_id,
        )
        return None if row is None else (ClaimStatus(row["status"]), row["instance_id"])

    async def renew(self, key: RunKey) -> bool:
        """Extend this process's lease; False if the run is no longer ours."""
        return (
            await self.pool.fetchval(
                "UPDATE agent_runs SET lease_until = now() + $5::interval "
                "WHERE tenant_id = $1 AND agent_name = $2 AND run_id = $3 "
                "AND status = 'running' AND instance_id = $4 RETURNING true",
                key.tenant_id,
                key.agent_name,
                key.run_id,
                self.instance_id,
                self.lease,
            )
            is not None
        )

    async def release(self, key: RunKey) -> None:
        """Give the run up unfinished (shutdown): any process may claim it at once."""
        await self.pool.execute(
            "UPDATE agent_runs SET lease_until = now() - interval '1 second', updated_at = now() "
            "WHERE tenant_id = $1 AND agent_name = $2 AND run_id = $3 "
            "AND status = 'running' AND instance_id = $4",
            key.tenant_id,
            key.agent_name,
            key.run_id,
            self.instance_id,
        )

    async def step(self, key: RunKey, step: str) -> Any | None:
        """The recorded result of a step, or None if it never completed."""
        raw = await self.pool.fetchval(
            "SELECT result FROM agent_run_steps "
            "WHERE tenant_id = $1 AND agent_name = $2 AND run_id = $3 AND step = $4",
            key.tenant_id,
            key.agent_name,
            key.run_id,
            step,
        )
        return None if raw is None else json.loads(raw)

    async def record_step(self, key: RunKey, step: str, result: Any) -> None:
        """Keep a step's result; the first one recorded stands."""
        await self.pool.execute(
            _RECORD_STEP,
            key.tenant_id,
            key.agent_name,
            key.run_id,
            step,
            json.dumps(result),
        )

    async def wait_for_approval(self, key: RunKey, approval_id: str) -> None:
        """Suspend the run: it holds no lease until the approval's verdict resumes it."""
        await self.pool.execute(
            "UPDATE agent_runs SET status = 'waiting', approval_id = $5, instance_id = NULL, "
            "lease_until = NULL, updated_at = now() "
            "WHERE tenant_id = $1 AND agent_name = $2 AND run_id = $3 AND instance_id = $4",
            key.tenant_id,
            key.agent_name,
            key.run_id,
            self.instance_id,
            approval_id,
        )

    async def waiting_request(self, key: RunKey) -> dict[str, Any] | None:
        """The approval request (an event as JSON) a waiting run is suspended on."""
        raw = await self.pool.fetchval(
            "SELECT s.result FROM agent_run_steps s JOIN agent_runs r "
            "USING (tenant_id, agent_name, run_id) "
            "WHERE r.tenant_id = $1 AND r.agent_name = $2 AND r.run_id = $3 "
            "AND r.status = 'waiting' AND s.result->>'approval_id' = r.approval_id",
            key.tenant_id,
            key.agent_name,
            key.run_id,
        )
        return None if raw is None else dict(json.loads(raw)["request"])

    async def resume(
        self, tenant_id: str, agent_name: str, approval_id: str, verdict: dict[str, Any]
    ) -> Claim | None:
        """Lease the run waiting for ``approval_id`` and record the verdict as step
        ``verdict_step(approval_id)``; None if no run of this agent waits for it (or
        another process resumed it first)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                _RESUME, tenant_id, agent_name, approval_id, self.instance_id, self.lease
            )
            if row is None:
                return None
            key = RunKey(tenant_id, agent_name, row["run_id"])
            await conn.execute(
                _RECORD_STEP,
                tenant_id,
                agent_name,
                key.run_id,
                verdict_step(approval_id),
                json.dumps(verdict),
            )
        accepted = AcceptedRecord(
            row["accepted"],
            row["accepted_topic"],
            row["accepted_partition"],
            row["accepted_offset"],
        )
        return Claim(key, accepted, first=False, started_at=row["created_at"])

    async def finish(self, key: RunKey, status: ClaimStatus) -> None:
        await self.pool.execute(
            "UPDATE agent_runs SET status = $4, lease_until = NULL, updated_at = now() "
            "WHERE tenant_id = $1 AND agent_name = $2 AND run_id = $3",
            key.tenant_id,
            key.agent_name,
            key.run_id,
            status.value,
        )
