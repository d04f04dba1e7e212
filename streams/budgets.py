"""``budgets``: every project's budget, spend per period and reservations.

This projection is the state the budget processor decides on (see
``streams.budget_processor``) and what the gateway reads (``budget_status``).
Its ``apply`` runs twice for most events: live, inside the processor's
decision, and later from the archive in the projection runner. So every change
is idempotent and independent of arrival order across topics:

- a cost counts once (``budget_costs`` is keyed by the cost event's id), in the
  period of its own event time;
- ``budget.set`` is last-writer-wins by (event time, event id); a new period or
  timezone re-buckets the stored costs, so spend per period depends only on
  the set of costs and the budget in force, not on which came first;
- a run holds ``max(estimate - consumed, 0)`` while it is accepted and not
  closed; every change applies the difference of that holding to the
  project's ``reserved_micros``, so a cost or a completion may come before
  the acceptance;
- thresholds and ``project.budget_exceeded`` are markers keyed by (period
  start, amount): a new period or another amount re-arms them.

Every ``apply`` locks the project's ``budgets`` row first. Decisions do the
same, so a decision and a runner batch never wait on each other in a cycle.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

from prometheus_client import Counter

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from schemas.models import Envelope
from schemas.models.enums import BudgetPeriod

log = logging.getLogger(__name__)

INVALID_EVENTS = Counter(
    "ledgerbus_budget_invalid_total", "Events the budgets projection ignored", ["reason"]
)

#: The one period of a budget without one: spend since the beginning.
LIFETIME = datetime(1970, 1, 1, tzinfo=UTC)
#: Percentages of the budget that emit ``budget.threshold_crossed``.
THRESHOLDS = (50, 80, 90, 100)
WARNING_PERCENT = 80
#: Largest cost or estimate one event may carry ($1bn); more is bad input. Sums
#: are bigint: overflowing one takes ~9,000 events of this size in one project.
MAX_MICROS = 10**15
PERIODS = frozenset(p.value for p in BudgetPeriod if p is not BudgetPeriod.UNKNOWN)

Status = Literal["no_budget", "ok", "warning", "exceeded"]


class InvalidBudget(ValueError):
    """An event the budgets cannot use; ``reason`` is a short code for metrics and dead letters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- pure rules -----------------------------------------------------------------


def zone(name: str | None) -> tzinfo:
    """The IANA timezone ``name`` (None = UTC)."""
    if name is None:
        return UTC
    try:
        return ZoneInfo(name)
    except (ValueError, LookupError, OSError) as exc:  # not found: KeyError; "Europe": a dir
        raise InvalidBudget("unknown_timezone", f"unknown timezone {name!r}") from exc


def check_budget(period: str | None, timezone: str | None) -> None:
    """Raise ``InvalidBudget`` unless the period and timezone can be computed with."""
    if period is not None and period not in PERIODS:
        raise InvalidBudget("unknown_period", f"unknown budget period {period!r}")
    zone(timezone)


def period_start(period: str | None, timezone: str | None, at: datetime) -> datetime:
    """Start (UTC) of the calendar day, ISO week, month or year holding ``at`` in
    ``timezone``; ``LIFETIME`` when the budget has no period.

    Computed from event times only, so a rebuild puts every cost where it was.
    """
    if period is None:
        return LIFETIME
    check_budget(period, timezone)
    where = zone(timezone)
    day = at.astimezone(where).date()
    first = _first_day(period, day)
    # A local midnight that does not exist (DST gap) resolves, with fold=0, to
    # the instant of the jump: still the first instant of the day.
    return datetime.combine(first, time(), tzinfo=where).astimezone(UTC)


def _first_day(period: str, day: date) -> date:
    if period == BudgetPeriod.WEEKLY:
        return day - timedelta(days=day.weekday())
    if period == BudgetPeriod.MONTHLY:
        return day.replace(day=1)
    if period == BudgetPeriod.YEARLY:
        return day.replace(month=1, day=1)
    return day


def crossed(spent: int, amount: int) -> tuple[int, ...]:
    """The thresholds (percent) that ``spent`` has reached out of ``amount``."""
    return tuple(t for t in THRESHOLDS if spent * 100 >= t * amount)


def status(spent: int, amount: int | None) -> Status:
    if amount is None:
        return "no_budget"
    if spent >= amount:
        return "exceeded"
    if spent * 100 >= WARNING_PERCENT * amount:
        return "warning"
    return "ok"


def fits(*, spent: int, reserved: int, estimate: int, amount: int) -> bool:
    """Whether a run with ``estimate`` may start: spend has not reached the budget
    and spend, what running runs may still use, and the estimate stay within it."""
    return spent < amount and spent + reserved + estimate <= amount


def holding(*, accepted: bool, closed: bool, reserved: int, consumed: int) -> int:
    """What a run keeps reserved: the rest of its estimate while it runs."""
    return max(reserved - consumed, 0) if accepted and not closed else 0


def check_event(envelope: Envelope[Any]) -> None:
    """Raise ``InvalidBudget`` for an event the budgets cannot use, though its
    schema allows it: text PostgreSQL cannot hold (NUL), an amount beyond
    ``MAX_MICROS``, a budget without a computable period or timezone."""
    data = envelope.data
    for name in ("project_id", "run_id", "agent_name"):
        value = getattr(data, name, None)
        if isinstance(value, str) and "\x00" in value:
            raise InvalidBudget("invalid_text", f"{envelope.type} {envelope.id}: NUL in {name}")
    for name in ("cost_micros", "cost_estimate_micros", "reserved_micros"):
        value = getattr(data, name, None)
        if isinstance(value, int) and value > MAX_MICROS:
            raise InvalidBudget(
                "too_large", f"{envelope.type} {envelope.id}: {name} {value} > {MAX_MICROS}"
            )
    if envelope.type == "budget.set":
        check_budget(None if data.period is None else data.period.value, data.timezone)


# --- rows -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """A project's ``budgets`` row (amount None: no budget set)."""

    tenant_id: str
    project_id: str
    amount_micros: int | None
    period: str | None
    timezone: str | None
    set_at: datetime | None
    set_event_id: uuid.UUID | None
    reserved_micros: int

    def period_start(self, at: datetime) -> datetime:
        return period_start(self.period, self.timezone, at)


@dataclass(frozen=True, slots=True)
class BudgetView:
    """What the gateway shows for a project at an instant (money in micro-USD)."""

    project_id: str
    amount_micros: int | None
    period: str | None
    timezone: str | None
    period_start: datetime | None
    spent_micros: int
    reserved_micros: int
    remaining_micros: int | None
    status: Status


_LOCK = """
SELECT tenant_id, project_id, amount_micros, period, timezone, set_at, set_event_id,
       reserved_micros
FROM budgets WHERE tenant_id = $1 AND project_id = $2 FOR UPDATE
"""

_RUN_COLUMNS = "decision, reserved_micros, consumed_micros, closed, decided_at, decision_event_id"


async def lock_budget(conn: Connection, tenant_id: str, project_id: str) -> Budget:
    """The project's row, created if missing and locked until the transaction ends."""
    row = await conn.fetchrow(_LOCK, tenant_id, project_id)
    if row is None:
        await conn.execute(
            "INSERT INTO budgets (tenant_id, project_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            tenant_id,
            project_id,
        )
        row = await conn.fetchrow(_LOCK, tenant_id, project_id)
    assert row is not None  # inserted above, and rows are never deleted but by a rebuild
    return Budget(**dict(row))


async def spent_in(conn: Connection, tenant_id: str, project_id: str, start: datetime) -> int:
    """Spend of the period that begins at ``start``."""
    spent = await conn.fetchval(
        "SELECT spent_micros FROM budget_spend "
        "WHERE tenant_id = $1 AND project_id = $2 AND period_start = $3",
        tenant_id,
        project_id,
        start,
    )
    return int(spent or 0)


async def budget_status(
    conn: Connection, tenant_id: str, project_id: str, at: datetime
) -> BudgetView:
    """Budget, spend in the period holding ``at``, reservations, what is left, status."""
    row = await conn.fetchrow(
        "SELECT amount_micros, period, timezone, reserved_micros FROM budgets "
        "WHERE tenant_id = $1 AND project_id = $2",
        tenant_id,
        project_id,
    )
    amount = row["amount_micros"] if row else None
    period = row["period"] if row else None
    timezone = row["timezone"] if row else None
    reserved = row["reserved_micros"] if row else 0
    start = period_start(period, timezone, at)
    spent = await spent_in(conn, tenant_id, project_id, start)
    return BudgetView(
        project_id=project_id,
        amount_micros=amount,
        period=period,
        timezone=timezone,
        period_start=None if start == LIFETIME else start,
        spent_micros=spent,
        reserved_micros=reserved,
        remaining_micros=None if amount is None else max(amount - spent - reserved, 0),
        status=status(spent, amount),
    )


# --- the projection ---------------------------------------------------------------


class Budgets(Projection):
    name = "budgets"
    event_types = (
        "budget.set",
        "cost.recorded",
        "agent.run_accepted",
        "agent.run_rejected",
        "agent.completed",
        "agent.failed",
        "budget.threshold_crossed",
        "project.budget_exceeded",
    )
    tables = (
        "budgets",
        "budget_runs",
        "budget_costs",
        "budget_spend",
        "budget_thresholds",
        "budget_exceeded",
    )
    ddl = """
    CREATE TABLE IF NOT EXISTS budgets (
        tenant_id       text        NOT NULL,
        project_id      text        NOT NULL,
        amount_micros   bigint,
        period          text,
        timezone        text,
        set_at          timestamptz,
        set_event_id    uuid,
        reserved_micros bigint      NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, project_id)
    );
    CREATE TABLE IF NOT EXISTS budget_runs (
        tenant_id         text    NOT NULL,
        project_id        text    NOT NULL,
        run_id            text    NOT NULL,
        decision          text    CHECK (decision IN ('accepted', 'rejected')),
        decision_event_id uuid,
        decided_at        timestamptz,
        agent_name        text,
        reserved_micros   bigint  NOT NULL DEFAULT 0,
        reason            text,
        detail            text,
        correlation_id    text,
        causation_id      text,
        consumed_micros   bigint  NOT NULL DEFAULT 0,
        closed            boolean NOT NULL DEFAULT false,
        PRIMARY KEY (tenant_id, project_id, run_id)
    );
    CREATE TABLE IF NOT EXISTS budget_costs (
        tenant_id   text        NOT NULL,
        event_id    uuid        NOT NULL,
        project_id  text        NOT NULL,
        run_id      text        NOT NULL,
        time        timestamptz NOT NULL,
        cost_micros bigint      NOT NULL,
        PRIMARY KEY (tenant_id, event_id)
    );
    CREATE INDEX IF NOT EXISTS budget_costs_by_project ON budget_costs (tenant_id, project_id);
    CREATE TABLE IF NOT EXISTS budget_spend (
        tenant_id    text        NOT NULL,
        project_id   text        NOT NULL,
        period_start timestamptz NOT NULL,
        spent_micros bigint      NOT NULL,
        PRIMARY KEY (tenant_id, project_id, period_start)
    );
    CREATE TABLE IF NOT EXISTS budget_thresholds (
        tenant_id         text        NOT NULL,
        project_id        text        NOT NULL,
        period_start      timestamptz NOT NULL,
        amount_micros     bigint      NOT NULL,
        threshold_percent integer     NOT NULL,
        event_id          uuid        NOT NULL,
        time              timestamptz NOT NULL,
        spent_micros      bigint      NOT NULL,
        status            text        NOT NULL,
        correlation_id    text,
        causation_id      text,
        PRIMARY KEY (tenant_id, project_id, period_start, amount_micros, threshold_percent)
    );
    CREATE TABLE IF NOT EXISTS budget_exceeded (
        tenant_id      text        NOT NULL,
        project_id     text        NOT NULL,
        period_start   timestamptz NOT NULL,
        amount_micros  bigint      NOT NULL,
        event_id       uuid        NOT NULL,
        time           timestamptz NOT NULL,
        spent_micros   bigint      NOT NULL,
        run_id         text,
        correlation_id text,
        causation_id   text,
        PRIMARY KEY (tenant_id, project_id, period_start, amount_micros)
    );
    """

    async def apply(self, conn: Connection, event: ProjectedEvent) -> None:
        envelope = event.envelope
        try:
            check_event(envelope)
        except InvalidBudget as exc:  # the processor dead-letters it; the archive keeps it
            INVALID_EVENTS.labels(exc.reason).inc()
            log.warning("ignored: %s", exc)
            return
        budget = await lock_budget(conn, envelope.tenant_id, envelope.data.project_id)
        match envelope.type:
            case "budget.set":
                await _set_budget(conn, budget, envelope)
            case "cost.recorded":
                await _record_cost(conn, budget, envelope)
            case "agent.run_accepted" | "agent.run_rejected":
                await _decide_run(conn, budget, envelope)
            case "agent.completed" | "agent.failed":
                await _change_run(conn, budget, envelope.data.run_id, "closed = true")
            case "budget.threshold_crossed":
                await _mark_threshold(conn, envelope)
            case "project.budget_exceeded":
                await _mark_exceeded(conn, envelope)


async def _set_budget(conn: Connection, budget: Budget, envelope: Envelope[Any]) -> None:
    data = envelope.data
    period = None if data.period is None else data.period.value
    last = (budget.set_at, budget.set_event_id)
    if last[0] is not None and last[1] is not None and last >= (envelope.time, envelope.id):
        return  # an earlier budget, or this one again
    await conn.execute(
        "UPDATE budgets SET amount_micros = $3, period = $4, timezone = $5, set_at = $6, "
        "set_event_id = $7 WHERE tenant_id = $1 AND project_id = $2",
        budget.tenant_id,
        budget.project_id,
        data.amount_micros,
        period,
        data.timezone,
        envelope.time,
        envelope.id,
    )
    if (period, data.timezone) != (budget.period, budget.timezone):
        await _rebucket(conn, budget, period, data.timezone)


async def _rebucket(conn: Connection, budget: Budget, period: str | None, tz: str | None) -> None:
    """Spend per period again from the stored costs, for a new period or timezone."""
    key = (budget.tenant_id, budget.project_id)
    rows = await conn.fetch(
        "SELECT time, cost_micros FROM budget_costs WHERE tenant_id = $1 AND project_id = $2",
        *key,
    )
    totals: dict[datetime, int] = defaultdict(int)
    for row in rows:
        totals[period_start(period, tz, row["time"])] += row["cost_micros"]
    await conn.execute("DELETE FROM budget_spend WHERE tenant_id = $1 AND project_id = $2", *key)
    await conn.execute(
        "INSERT INTO budget_spend (tenant_id, project_id, period_start, spent_micros) "
        "SELECT $1, $2, s, m FROM unnest($3::timestamptz[], $4::bigint[]) AS t(s, m)",
        *key,
        list(totals),
        list(totals.values()),
    )


async def _record_cost(conn: Connection, budget: Budget, envelope: Envelope[Any]) -> None:
    data = envelope.data
    first = await conn.fetchval(
        "INSERT INTO budget_costs (tenant_id, event_id, project_id, run_id, time, cost_micros) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true",
        budget.tenant_id,
        envelope.id,
        budget.project_id,
        data.run_id,
        envelope.time,
        data.cost_micros,
    )
    if not first:
        return
    await conn.execute(
        "INSERT INTO budget_spend AS s (tenant_id, project_id, period_start, spent_micros) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, project_id, period_start) "
        "DO UPDATE SET spent_micros = s.spent_micros + EXCLUDED.spent_micros",
        budget.tenant_id,
        budget.project_id,
        budget.period_start(envelope.time),
        data.cost_micros,
    )
    await _change_run(
        conn, budget, data.run_id, "consumed_micros = consumed_micros + $4", data.cost_micros
    )


async def _decide_run(conn: Connection, budget: Budget, envelope: Envelope[Any]) -> None:
    """Record a decision; the earliest by (time, id) stands if a run ever had two."""
    data = envelope.data
    before = await _lock_run(conn, budget, data.run_id)
    first = (before["decided_at"], before["decision_event_id"])
    if first[1] is not None and first <= (envelope.time, envelope.id):
        return
    accepted = envelope.type == "agent.run_accepted"
    await _update_run(
        conn,
        budget,
        before,
        data.run_id,
        "decision = $4, decision_event_id = $5, decided_at = $6, agent_name = $7, "
        "reserved_micros = $8, reason = $9, detail = $10, correlation_id = $11, "
        "causation_id = $12",
        "accepted" if accepted else "rejected",
        envelope.id,
        envelope.time,
        data.agent_name,
        data.reserved_micros if accepted else 0,
        None if accepted else data.reason.value,
        None if accepted else data.detail,
        envelope.correlation_id,
        envelope.causation_id,
    )


async def _lock_run(conn: Connection, budget: Budget, run_id: str) -> Any:
    key = (budget.tenant_id, budget.project_id, run_id)
    await conn.execute(
        "INSERT INTO budget_runs (tenant_id, project_id, run_id) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING",
        *key,
    )
    return await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM budget_runs "
        "WHERE tenant_id = $1 AND project_id = $2 AND run_id = $3 FOR UPDATE",
        *key,
    )


def _holding(run: Any) -> int:
    return holding(
        accepted=run["decision"] == "accepted",
        closed=run["closed"],
        reserved=run["reserved_micros"],
        consumed=run["consumed_micros"],
    )


async def _change_run(
    conn: Connection, budget: Budget, run_id: str, assignments: str, *args: Any
) -> None:
    """Update one run (``assignments`` use $4…) and move the project's reserved
    amount by the change in what the run holds."""
    before = await _lock_run(conn, budget, run_id)
    await _update_run(conn, budget, before, run_id, assignments, *args)


async def _update_run(
    conn: Connection, budget: Budget, before: Any, run_id: str, assignments: str, *args: Any
) -> None:
    after = await conn.fetchrow(
        f"UPDATE budget_runs SET {assignments} "
        "WHERE tenant_id = $1 AND project_id = $2 AND run_id = $3 "
        f"RETURNING {_RUN_COLUMNS}",
        budget.tenant_id,
        budget.project_id,
        run_id,
        *args,
    )
    delta = _holding(after) - _holding(before)
    if delta:
        await conn.execute(
            "UPDATE budgets SET reserved_micros = reserved_micros + $3 "
            "WHERE tenant_id = $1 AND project_id = $2",
            budget.tenant_id,
            budget.project_id,
            delta,
        )


async def _mark_threshold(conn: Connection, envelope: Envelope[Any]) -> None:
    data = envelope.data
    await conn.execute(
        "INSERT INTO budget_thresholds (tenant_id, project_id, period_start, amount_micros, "
        "threshold_percent, event_id, time, spent_micros, status, correlation_id, causation_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        envelope.tenant_id,
        data.project_id,
        data.period_start or LIFETIME,
        data.amount_micros,
        data.threshold_percent,
        envelope.id,
        envelope.time,
        data.spent_micros,
        data.status.value,
        envelope.correlation_id,
        envelope.causation_id,
    )


async def _mark_exceeded(conn: Connection, envelope: Envelope[Any]) -> None:
    data = envelope.data
    await conn.execute(
        "INSERT INTO budget_exceeded (tenant_id, project_id, period_start, amount_micros, "
        "event_id, time, spent_micros, run_id, correlation_id, causation_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        envelope.tenant_id,
        data.project_id,
        data.period_start or LIFETIME,
        data.amount_micros,
        envelope.id,
        envelope.time,
        data.spent_micros,
        data.run_id,
        envelope.correlation_id,
        envelope.causation_id,
    )
