"""The approvals processor: one verdict per approval, or a rejection that changes nothing.

A decision command (``approval.decision_submitted``) becomes ``approval.approved``
/ ``approval.denied``, or ``approval.decision_rejected`` when the approval is
already decided, expired, unknown in the command's tenant (another tenant's
approval is "not found" too: nothing leaks), or the decider lacks the
permission. A timer expires what nobody decided in time.

Every decision is a ``StreamsContext.decide`` transaction on the ``approvals``
projection. Decisions on one approval take a transaction-level advisory lock on
it, so they take turns even when two workers (or two consumer groups) handle
the same commands, and each looks at what the previous one committed:

- the row's ``deciding_event_id`` is this command → the same verdict again;
- a rejection of this command is on record → the same rejection again;
- otherwise decide once, apply the events to the projection, return them.

Events are pure functions of the command and the row (derived ids, the
command's time), so re-emitting after a crash yields byte-identical events
that the archive and consumers deduplicate.

An expiry has no command to redeliver it: the timer notes what it expired in
``approval_expiry_outbox`` in the same transaction and deletes the note once
Kafka confirmed the event; notes older than ``outbox_grace`` are published
again (same id), so a crash between commit and publish loses no expiry.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import faust
from prometheus_client import Counter, Histogram
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from schemas.catalog import EventCatalog
from schemas.models import Envelope
from schemas.models.enums import DecisionRejectionReason as Reason
from schemas.models.enums import Verdict
from streams.app import StreamsConfig, event_topic
from streams.approvals import ApprovalsProjection, unstorable
from streams.context import StreamsContext, derived_event, derived_id

log = logging.getLogger("ledgerbus.streams.approvals")

NAME = "approvals"
SOURCE = "approvals"

DECISIONS = Counter(
    "ledgerbus_approvals_decisions_total", "Decision commands handled, by outcome", ["outcome"]
)
DECISION_SECONDS = Histogram(
    "ledgerbus_approvals_decision_seconds", "One decision command, from decode to publish"
)
EXPIRED = Counter("ledgerbus_approvals_expired_total", "Approvals the timer expired")
REPUBLISHED = Counter(
    "ledgerbus_approvals_expiries_republished_total",
    "Expiries published again because their first publication was not confirmed",
)
UNUSABLE = Counter(
    "ledgerbus_approvals_unusable_total", "Inputs dead-lettered as unusable, by reason", ["reason"]
)
FAILURES = Counter(
    "ledgerbus_approvals_failures_total",
    "Inputs dead-lettered, or timer ticks abandoned, after an unexpected error",
    ["input"],
)

#: First key of the per-approval advisory lock; the second hashes tenant and approval id.
_LOCK_CLASS = 0x61707072  # "appr"

_LOCK = "SELECT pg_advisory_xact_lock($1, hashtext($2))"

_APPROVAL = "SELECT * FROM approvals WHERE tenant_id = $1 AND approval_id = $2 FOR UPDATE"

_EARLIER_REJECTION = """
SELECT reason, detail FROM approval_rejections WHERE tenant_id = $1 AND command_id = $2
"""

_DUE = """
SELECT * FROM approvals WHERE status = 'pending' AND expires_at <= now()
ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
"""

_NOTE = """
INSERT INTO approval_expiry_outbox (tenant_id, approval_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
"""

_STALE = """
SELECT a.* FROM approval_expiry_outbox o JOIN approvals a USING (tenant_id, approval_id)
WHERE o.noted_at <= now() - make_interval(secs => $1)
ORDER BY o.noted_at LIMIT $2 FOR UPDATE OF o SKIP LOCKED
"""

_CONFIRM = """
DELETE FROM approval_expiry_outbox o USING unnest($1::text[], $2::text[]) AS c(tenant, id)
WHERE o.tenant_id = c.tenant AND o.approval_id = c.id
"""

Row = asyncpg.Record
Events = list[Envelope[Any]]


class ApprovalSettings(BaseSettings):
    """``LEDGERBUS_APPROVALS_*``: how often and how much the expiry timer works."""

    model_config = SettingsConfigDict(env_prefix="LEDGERBUS_APPROVALS_")

    expiry_interval: float = Field(default=1.0, gt=0)
    """Seconds between looks for pending approvals past their deadline."""
    expiry_batch: int = Field(default=500, ge=1)
    """Approvals expired per transaction."""
    outbox_grace: float = Field(default=10.0, gt=0)
    """Seconds after which an expiry Kafka has not confirmed is published again."""


class Unusable(Exception):
    """An input the schema allows but the processor cannot use; dead-lettered with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_storable(event: Envelope[Any]) -> None:
    field = unstorable(event)
    if field is not None:
        raise Unusable("invalid_text", f"{event.type} {event.id}: NUL in {field}")


def expiry_id(row: Row) -> uuid.UUID:
    """The id of the approval's expiry: derived from its request, so the timer,
    a late decision and any retry all produce the same event."""
    return derived_id(row["request_event_id"], "expired")


def expired_event(catalog: EventCatalog, row: Row) -> Envelope[Any]:
    """``approval.expired`` for the approval in ``row``, dated at its deadline."""
    request = str(row["request_event_id"])
    return catalog.get("approval.expired").envelope_model.model_validate(
        {
            "id": expiry_id(row),
            "type": "approval.expired",
            "source": SOURCE,
            "subject": row["approval_id"],
            "tenant_id": row["tenant_id"],
            "time": row["expires_at"],
            "correlation_id": row["correlation_id"] or request,
            "causation_id": request,
            "data": {
                "approval_id": row["approval_id"],
                "run_id": row["run_id"],
                "expired_at": row["expires_at"],
            },
        }
    )


def outcome(events: Sequence[Envelope[Any]]) -> str:
    """The metrics label of a decision: the verdict, or the rejection's reason."""
    last = events[-1]
    if last.type == "approval.decision_rejected":
        return f"rejected_{last.data.reason}"
    return str(last.type).removeprefix("approval.")


class ApprovalDecisions:
    """What the processor decides, on a started ``StreamsContext``."""

    def __init__(
        self, context: StreamsContext, projection: ApprovalsProjection, settings: ApprovalSettings
    ) -> None:
        self.context = context
        self.projection = projection
        self.settings = settings

    async def _record(self, conn: Connection, events: Events) -> Events:
        """Apply decided ``events`` to the projection; returns them, to be announced."""
        for event in events:
            await self.projection.apply(conn, ProjectedEvent(0, event))
        return events

    async def on_fact(self, event: Envelope[Any]) -> None:
        """Fold an approvals-topic event (a request, or a verdict from anywhere) in;
        it is on Kafka already, so there is nothing to announce."""
        if event.type not in self.projection.event_types:
            return
        check_storable(event)

        async def fold(conn: Connection) -> Events:
            await self.projection.apply(conn, ProjectedEvent(0, event))
            return []

        await self.context.decide(NAME, fold)

    async def on_command(self, command: Envelope[Any]) -> None:
        """Turn a decision command into a verdict or a rejection."""
        if command.type != "approval.decision_submitted":
            return
        check_storable(command)
        with DECISION_SECONDS.time():
            decided: Events = []

            async def decide(conn: Connection) -> Events:
                decided[:] = await self._record(conn, await self._judge(conn, command))
                return decided

            await self.context.decide(NAME, decide)
        DECISIONS.labels(outcome(decided)).inc()

    async def _judge(self, conn: Connection, command: Envelope[Any]) -> Events:
        tenant, data = command.tenant_id, command.data
        await conn.execute(_LOCK, _LOCK_CLASS, f"{tenant}/{data.approval_id}")
        row = await conn.fetchrow(_APPROVAL, tenant, data.approval_id)
        earlier = await conn.fetchrow(_EARLIER_REJECTION, tenant, str(command.id))
        if earlier is not None:
            return self._rejected(command, row, Reason(earlier["reason"]), earlier["detail"])
        if row is None:
            return self._rejected(command, row, Reason.NOT_FOUND, "no such approval")
        if row["deciding_event_id"] == command.id:
            return [self._verdict(command, row)]
        status = row["status"]
        if status == "expired" or (status == "pending" and command.time >= row["expires_at"]):
            detail = f"the approval expired at {row['expires_at'].isoformat()}"
            return self._rejected(command, row, Reason.EXPIRED, detail)
        if status != "pending":
            return self._rejected(command, row, Reason.ALREADY_DECIDED, f"already {status}")
        if data.verdict not in (Verdict.APPROVE, Verdict.DENY):
            return self._rejected(command, row, Reason.UNKNOWN, "verdict must be approve or deny")
        if row["required_permission"] not in data.decider_permissions:
            detail = f"deciding needs the permission {row['required_permission']}"
            return self._rejected(command, row, Reason.FORBIDDEN, detail)
        return [self._verdict(command, row)]

    def _verdict(self, command: Envelope[Any], row: Row) -> Envelope[Any]:
        data = command.data
        approved = data.verdict == Verdict.APPROVE
        return derived_event(
            self.context,
            "approval.approved" if approved else "approval.denied",
            cause=command,
            kind="verdict",
            subject=data.approval_id,
            data={
                "approval_id": data.approval_id,
                "run_id": row["run_id"],
                "decider": data.decider,
                "comment": data.comment,
            },
            time=command.time,
            source=SOURCE,
        )

    def _rejected(
        self, command: Envelope[Any], row: Row | None, reason: Reason, detail: str | None
    ) -> Events:
        """The rejection; for ``expired``, preceded by the approval's own expiry
        (expiring it now if it is still pending, or re-emitting the timer's)."""
        events: Events = []
        if (
            reason is Reason.EXPIRED
            and row is not None
            and row["request_event_id"] is not None
            and (row["status"] == "pending" or row["verdict_event_id"] == expiry_id(row))
        ):
            events.append(expired_event(self.context.catalog, row))
        data = command.data
        rejection = derived_event(
            self.context,
            "approval.decision_rejected",
            cause=command,
            kind="rejection",
            subject=data.approval_id,
            data={
                "approval_id": data.approval_id,
                "decider": data.decider,
                "verdict": data.verdict,
                "reason": reason,
                "detail": detail,
            },
            time=command.time,
            source=SOURCE,
        )
        return [*events, rejection]

    async def tick(self) -> None:
        """The timer: expire what is due, re-publish expiries left unconfirmed."""
        try:
            EXPIRED.inc(await self.expire_due())
            REPUBLISHED.inc(await self.republish_unconfirmed())
        except Exception:
            FAILURES.labels("timer").inc()
            log.exception("approvals: expiry tick failed; the next tick tries again")

    async def expire_due(self) -> int:
        """Expire pending approvals past their deadline, a batch per transaction."""
        total = 0
        while True:
            expired = await self._expire_batch()
            total += len(expired)
            if len(expired) < self.settings.expiry_batch:
                return total

    async def _expire_batch(self) -> Events:
        expired: Events = []

        async def decide(conn: Connection) -> Events:
            # A retry after a failed publish finds nothing due: the outbox has it.
            rows = await conn.fetch(_DUE, self.settings.expiry_batch)
            expired[:] = [expired_event(self.context.catalog, row) for row in rows]
            await conn.executemany(_NOTE, [(r["tenant_id"], r["approval_id"]) for r in rows])
            return await self._record(conn, expired)

        await self.context.decide(NAME, decide)
        await self._confirm(expired)
        return expired

    async def republish_unconfirmed(self) -> int:
        """Publish again the expiries whose outbox note outlived ``outbox_grace``."""
        stale: Events = []

        async def decide(conn: Connection) -> Events:
            rows = await conn.fetch(_STALE, self.settings.outbox_grace, self.settings.expiry_batch)
            stale[:] = [expired_event(self.context.catalog, row) for row in rows]
            return stale

        await self.context.decide(NAME, decide)
        await self._confirm(stale)
        return len(stale)

    async def _confirm(self, published: Events) -> None:
        """Kafka has these expiries: drop their outbox notes."""
        if published:
            await self.context.pool.execute(
                _CONFIRM,
                [event.tenant_id for event in published],
                [event.data.approval_id for event in published],
            )


Handler = Callable[[Envelope[Any]], Awaitable[None]]


async def consume(
    context: StreamsContext, stream: faust.StreamT[Any], handle: Handler, source: str
) -> None:
    """Hand every event of ``stream`` to ``handle``; one that fails for an
    unexpected reason is logged, counted and dead-lettered, and the agent goes on."""
    async for message in stream.events():
        event = await context.decode(message)
        if event is None:
            continue
        try:
            await handle(event)
        except Unusable as exc:
            UNUSABLE.labels(exc.reason).inc()
            log.warning("approvals: %s; dead-lettered", exc)
            await context.dead_letter(message, exc.reason, str(exc))
        except Exception as exc:
            FAILURES.labels(source).inc()
            log.exception("approvals: %s %s failed; dead-lettered", event.type, event.id)
            await context.dead_letter(message, "processing_failed", repr(exc))


class ApprovalProcessor:
    """Agents on the approvals and commands topics, and the expiry timer."""

    name = NAME

    def __init__(self, settings: ApprovalSettings | None = None) -> None:
        self.settings = settings or ApprovalSettings()
        self.projection = ApprovalsProjection()

    @property
    def projections(self) -> Sequence[Projection]:
        return [self.projection]

    def install(self, app: faust.App, config: StreamsConfig, context: StreamsContext) -> None:
        decisions = ApprovalDecisions(context, self.projection, self.settings)

        @app.agent(event_topic(app, config, "approvals"), name="approvals-facts")
        async def facts(stream: faust.StreamT[Any]) -> None:
            await consume(context, stream, decisions.on_fact, "approvals")

        @app.agent(event_topic(app, config, "commands"), name="approvals-commands")
        async def commands(stream: faust.StreamT[Any]) -> None:
            await consume(context, stream, decisions.on_command, "commands")

        app.timer(self.settings.expiry_interval, name="approvals-expiry")(decisions.tick)
