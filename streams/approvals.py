"""The ``approvals`` projection: each tenant's approvals, pending or decided, and refused decisions.

It is the state the approvals processor decides on (``streams.approval_processor``)
and what the gateway lists. Both the processor (live, inside its decisions) and
the projection runner (from the archive) fold events into it, so ``apply``
depends only on the events, in any order:

- ``approval.requested`` fills in what was asked; it never changes a status;
- the first verdict (``approved``, ``denied``, ``expired``) wins; one that comes
  before its request (the archive may hold them in that order) leaves a row the
  request completes later;
- ``approval.decision_rejected`` is logged by event id, so a decision command's
  outcome can be looked up whichever way it went.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from schemas.models import Envelope

#: Unconfirmed timer expiries (see ``streams.approval_processor``). The table is
#: the processor's own, not derived from events: it is created with the
#: projection but is not one of its ``tables``, so a rebuild keeps it.
OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS approval_expiry_outbox (
    tenant_id   text        NOT NULL,
    approval_id text        NOT NULL,
    noted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, approval_id)
);
"""

_INSERT_REQUEST = """
INSERT INTO approvals AS a (
    tenant_id, approval_id, request_event_id, correlation_id, run_id, agent_name, action,
    risk_level, required_permission, details, requested_at, expires_at, status
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending')
ON CONFLICT (tenant_id, approval_id) DO UPDATE SET
    request_event_id = EXCLUDED.request_event_id,
    correlation_id = EXCLUDED.correlation_id,
    agent_name = EXCLUDED.agent_name,
    action = EXCLUDED.action,
    risk_level = EXCLUDED.risk_level,
    required_permission = EXCLUDED.required_permission,
    details = EXCLUDED.details,
    requested_at = EXCLUDED.requested_at,
    expires_at = EXCLUDED.expires_at
WHERE a.request_event_id IS NULL
"""

_INSERT_VERDICT = """
INSERT INTO approvals AS a (
    tenant_id, approval_id, run_id, status, decider, comment, decided_at,
    deciding_event_id, verdict_event_id
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (tenant_id, approval_id) DO UPDATE SET
    status = EXCLUDED.status,
    decider = EXCLUDED.decider,
    comment = EXCLUDED.comment,
    decided_at = EXCLUDED.decided_at,
    deciding_event_id = EXCLUDED.deciding_event_id,
    verdict_event_id = EXCLUDED.verdict_event_id
WHERE a.status = 'pending'
"""

_INSERT_REJECTION = """
INSERT INTO approval_rejections (
    tenant_id, event_id, command_id, approval_id, decider, verdict, reason, detail, rejected_at
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (tenant_id, event_id) DO NOTHING
"""

#: Verdict event type -> the status it sets.
VERDICT_STATUS = {
    "approval.approved": "approved",
    "approval.denied": "denied",
    "approval.expired": "expired",
}


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class ApprovalsProjection(Projection):
    name = "approvals"
    event_types = (
        "approval.requested",
        "approval.approved",
        "approval.denied",
        "approval.expired",
        "approval.decision_rejected",
    )
    tables = ("approvals", "approval_rejections")
    ddl = (
        """
    CREATE TABLE IF NOT EXISTS approvals (
        tenant_id           text        NOT NULL,
        approval_id         text        NOT NULL,
        request_event_id    uuid,
        correlation_id      text,
        run_id              text        NOT NULL,
        agent_name          text,
        action              text,
        risk_level          text,
        required_permission text,
        details             text,
        requested_at        timestamptz,
        expires_at          timestamptz,
        status              text        NOT NULL
            CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
        decider             text,
        comment             text,
        decided_at          timestamptz,
        deciding_event_id   uuid,
        verdict_event_id    uuid,
        PRIMARY KEY (tenant_id, approval_id)
    );
    CREATE INDEX IF NOT EXISTS approvals_due ON approvals (expires_at) WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS approvals_by_status ON approvals (tenant_id, status, approval_id);
    CREATE TABLE IF NOT EXISTS approval_rejections (
        tenant_id   text        NOT NULL,
        event_id    uuid        NOT NULL,
        command_id  text,
        approval_id text        NOT NULL,
        decider     text        NOT NULL,
        verdict     text        NOT NULL,
        reason      text        NOT NULL,
        detail      text,
        rejected_at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, event_id)
    );
    CREATE INDEX IF NOT EXISTS approval_rejections_by_command
        ON approval_rejections (tenant_id, command_id);
    """
        + OUTBOX_DDL
    )

    async def apply(self, conn: Connection, event: ProjectedEvent) -> None:
        envelope = event.envelope
        data = envelope.data
        if unstorable(envelope) is not None:
            return  # the processor dead-letters it; here it must not stall the tenant
        if envelope.type == "approval.requested":
            await conn.execute(
                _INSERT_REQUEST,
                envelope.tenant_id,
                data.approval_id,
                envelope.id,
                envelope.correlation_id,
                data.run_id,
                data.agent_name,
                data.action,
                str(data.risk_level),
                data.required_permission,
                data.details,
                envelope.time,
                data.expires_at,
            )
        elif envelope.type in VERDICT_STATUS:
            await conn.execute(
                _INSERT_VERDICT,
                envelope.tenant_id,
                data.approval_id,
                data.run_id,
                VERDICT_STATUS[envelope.type],
                getattr(data, "decider", None),
                getattr(data, "comment", None),
                envelope.time,
                deciding_event_id(envelope),
                envelope.id,
            )
        elif envelope.type == "approval.decision_rejected":
            await conn.execute(
                _INSERT_REJECTION,
                envelope.tenant_id,
                envelope.id,
                envelope.causation_id,
                data.approval_id,
                data.decider,
                str(data.verdict),
                str(data.reason),
                data.detail,
                envelope.time,
            )


def unstorable(event: Envelope[Any]) -> str | None:
    """The payload field holding text PostgreSQL cannot store (NUL), if any."""
    for name, value in event.data:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and "\x00" in text for text in texts):
            return str(name)
    return None


def deciding_event_id(verdict: Envelope[Any]) -> uuid.UUID:
    """What decided: the decision command behind an approval or a denial (its
    causation), or the expiry itself."""
    if verdict.type != "approval.expired" and verdict.causation_id:
        try:
            return uuid.UUID(verdict.causation_id)
        except ValueError:
            pass  # published by something else than the processor: the verdict decided
    return verdict.id


# -- queries for the gateway ---------------------------------------------------------------------

Queryable = Connection | asyncpg.Pool

_COLUMNS = """
approval_id, run_id, agent_name, action, risk_level, required_permission, details,
requested_at, expires_at, status, decider, comment, decided_at, deciding_event_id,
verdict_event_id
"""

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval as a tenant sees it (decider fields are None while pending)."""

    approval_id: str
    run_id: str
    agent_name: str
    action: str
    risk_level: str
    required_permission: str
    details: str | None
    requested_at: datetime
    expires_at: datetime
    status: ApprovalStatus
    decider: str | None
    comment: str | None
    decided_at: datetime | None
    deciding_event_id: uuid.UUID | None
    """The decision command that won, or the expiry event."""
    verdict_event_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused decision command and why."""

    event_id: uuid.UUID
    command_id: str | None
    approval_id: str
    decider: str
    verdict: str
    reason: str
    detail: str | None
    rejected_at: datetime


def _approval(row: asyncpg.Record) -> Approval:
    return Approval(**{**dict(row), "status": ApprovalStatus(row["status"])})


async def list_approvals(
    conn: Queryable,
    tenant_id: str,
    status: ApprovalStatus | str | None = None,
    *,
    limit: int = 50,
    after: str | None = None,
) -> list[Approval]:
    """The tenant's approvals in approval id order, ``limit`` after the id ``after``.

    Rows that only hold a verdict whose request has not been projected yet are
    left out: there is nothing to show about them.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    wanted = None if status is None else ApprovalStatus(status).value
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM approvals
        WHERE tenant_id = $1 AND request_event_id IS NOT NULL
          AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR approval_id > $3)
        ORDER BY approval_id LIMIT $4
        """,
        tenant_id,
        wanted,
        after,
        limit,
    )
    return [_approval(row) for row in rows]


async def get_approval(conn: Queryable, tenant_id: str, approval_id: str) -> Approval | None:
    """The tenant's approval ``approval_id``; None if the tenant has no such approval."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM approvals "
        "WHERE tenant_id = $1 AND approval_id = $2 AND request_event_id IS NOT NULL",
        tenant_id,
        approval_id,
    )
    return None if row is None else _approval(row)


async def get_rejection(conn: Queryable, tenant_id: str, command_id: str) -> Rejection | None:
    """Why the tenant's decision command ``command_id`` was refused, if it was."""
    row = await conn.fetchrow(
        "SELECT event_id, command_id, approval_id, decider, verdict, reason, detail, rejected_at "
        "FROM approval_rejections WHERE tenant_id = $1 AND command_id = $2",
        tenant_id,
        command_id,
    )
    return None if row is None else Rejection(**dict(row))
