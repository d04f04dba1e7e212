"""The ``runs`` projection: every agent run of a tenant, its state, times and LLM cost.

Folded by the projection runner from the archive (SPEC Guarantee 3), where a
run's events sit on different topics (``agent-runs``, ``costs``) and so may be
applied in any order, and more than once. ``apply`` therefore depends only on
the events:

- the status is that of the run's most advanced event: requested < accepted <
  started < rejected, completed or failed (ties: later event time, then id);
- each time (requested, accepted, started) keeps its earliest value: a run
  resumed after an approval emits ``agent.started`` again;
- costs are summed once per ``cost.recorded`` event id (``run_costs`` remembers
  them), and may arrive before the run's first lifecycle event.

The run journal the agent runtime keeps (``consumers.run_journal``) is the
runtime's own working state; this is the record people read (``GET /v1/runs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from streams.approvals import MAX_PAGE, Queryable, unstorable


class RunStatus(StrEnum):
    UNKNOWN = "unknown"  # only costs seen so far
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    STARTED = "started"
    REJECTED = "rejected"
    COMPLETED = "completed"
    FAILED = "failed"


#: How far each lifecycle event takes a run; the most advanced one names its status.
RANKS = {
    "agent.run_requested": (RunStatus.REQUESTED, 1),
    "agent.run_accepted": (RunStatus.ACCEPTED, 2),
    "agent.started": (RunStatus.STARTED, 3),
    "agent.run_rejected": (RunStatus.REJECTED, 4),
    "agent.completed": (RunStatus.COMPLETED, 4),
    "agent.failed": (RunStatus.FAILED, 4),
}

#: The event that takes a run furthest sets these columns: a row comparison, so
#: the outcome does not depend on the order events are applied in.
_WINS = (
    "(EXCLUDED.status_rank, EXCLUDED.status_at, EXCLUDED.status_event_id)"
    " > (r.status_rank, r.status_at, r.status_event_id)"
)
_FROM_WINNER = ",\n    ".join(
    f"{column} = CASE WHEN {_WINS} THEN EXCLUDED.{column} ELSE r.{column} END"
    for column in (
        "status",
        "status_rank",
        "status_at",
        "status_event_id",
        "finished_at",
        "duration_ms",
        "reason",
    )
)

_LIFECYCLE = f"""
INSERT INTO runs AS r (
    tenant_id, run_id, agent_name, project_id, correlation_id, parent_run_id,
    status, status_rank, status_at, status_event_id,
    requested_at, accepted_at, started_at, finished_at, duration_ms, reason
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (tenant_id, run_id) DO UPDATE SET
    correlation_id = coalesce(r.correlation_id, EXCLUDED.correlation_id),
    parent_run_id = coalesce(r.parent_run_id, EXCLUDED.parent_run_id),
    requested_at = least(r.requested_at, EXCLUDED.requested_at),
    accepted_at = least(r.accepted_at, EXCLUDED.accepted_at),
    started_at = least(r.started_at, EXCLUDED.started_at),
    {_FROM_WINNER}
"""

_COST = """
WITH counted AS (
    INSERT INTO run_costs (tenant_id, event_id, run_id, cost_micros)
    VALUES ($1, $2, $3, $6)
    ON CONFLICT DO NOTHING
    RETURNING cost_micros
)
INSERT INTO runs AS r (tenant_id, run_id, agent_name, project_id, cost_micros, llm_calls)
SELECT $1, $3, $4, $5, cost_micros, 1 FROM counted
ON CONFLICT (tenant_id, run_id) DO UPDATE SET
    cost_micros = r.cost_micros + EXCLUDED.cost_micros,
    llm_calls = r.llm_calls + 1
"""


class RunsProjection(Projection):
    name = "runs"
    event_types = (*RANKS, "cost.recorded")
    tables = ("runs", "run_costs")
    ddl = """
    CREATE TABLE IF NOT EXISTS runs (
        tenant_id       text        NOT NULL,
        run_id          text        NOT NULL,
        agent_name      text        NOT NULL,
        project_id      text        NOT NULL,
        correlation_id  text,
        parent_run_id   text,
        -- 'unknown' until a lifecycle event arrives (costs may come first)
        status          text        NOT NULL DEFAULT 'unknown',
        status_rank     smallint    NOT NULL DEFAULT 0,
        status_at       timestamptz NOT NULL DEFAULT '-infinity',
        status_event_id uuid        NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
        requested_at    timestamptz,
        accepted_at     timestamptz,
        started_at      timestamptz,
        finished_at     timestamptz,
        duration_ms     bigint,
        reason          text,
        cost_micros     bigint      NOT NULL DEFAULT 0,
        llm_calls       bigint      NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, run_id)
    );
    CREATE TABLE IF NOT EXISTS run_costs (
        tenant_id   text   NOT NULL,
        event_id    uuid   NOT NULL,
        run_id      text   NOT NULL,
        cost_micros bigint NOT NULL,
        PRIMARY KEY (tenant_id, event_id)
    );
    """

    async def apply(self, conn: Connection, event: ProjectedEvent) -> None:
        envelope = event.envelope
        if unstorable(envelope) is not None:
            return  # text PostgreSQL cannot hold: skipped, so the tenant's projection goes on
        data = envelope.data
        if envelope.type == "cost.recorded":
            await conn.execute(
                _COST,
                envelope.tenant_id,
                envelope.id,
                data.run_id,
                data.agent_name,
                data.project_id,
                data.cost_micros,
            )
            return
        status, rank = RANKS[envelope.type]
        at = envelope.time
        finished = rank == 4
        await conn.execute(
            _LIFECYCLE,
            envelope.tenant_id,
            data.run_id,
            data.agent_name,
            data.project_id,
            envelope.correlation_id,
            getattr(data, "parent_run_id", None),
            status.value,
            rank,
            at,
            envelope.id,
            at if status is RunStatus.REQUESTED else None,
            at if status is RunStatus.ACCEPTED else None,
            at if status is RunStatus.STARTED else None,
            at if finished else None,
            getattr(data, "duration_ms", None),
            str(data.reason) if status in (RunStatus.REJECTED, RunStatus.FAILED) else None,
        )


# -- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One run as its events describe it; times are UTC, money integer micro-USD."""

    run_id: str
    agent_name: str
    project_id: str
    status: RunStatus
    correlation_id: str | None
    parent_run_id: str | None
    requested_at: datetime | None
    accepted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    reason: str | None
    cost_micros: int
    llm_calls: int


_COLUMNS = ", ".join(Run.__dataclass_fields__)


def _run(row: Any) -> Run:
    return Run(**{**dict(row), "status": RunStatus(row["status"])})


async def get_run(conn: Queryable, tenant_id: str, run_id: str) -> Run | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM runs WHERE tenant_id = $1 AND run_id = $2", tenant_id, run_id
    )
    return None if row is None else _run(row)


async def list_runs(
    conn: Queryable,
    tenant_id: str,
    *,
    status: RunStatus | None = None,
    agent_name: str | None = None,
    project_id: str | None = None,
    correlation_id: str | None = None,
    limit: int = 50,
    after: str | None = None,
) -> list[Run]:
    """The tenant's runs matching every filter given, in run id order after ``after``."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM runs WHERE tenant_id = $1"
        " AND ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR agent_name = $3)"
        " AND ($4::text IS NULL OR project_id = $4)"
        " AND ($5::text IS NULL OR correlation_id = $5)"
        " AND ($6::text IS NULL OR run_id > $6)"
        " ORDER BY run_id LIMIT $7",
        tenant_id,
        status,
        agent_name,
        project_id,
        correlation_id,
        after,
        limit,
    )
    return [_run(row) for row in rows]
