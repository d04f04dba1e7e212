"""The budget processor: accepts or rejects agent runs, and announces thresholds.

Single writer per project. A router agent reads every topic that carries an
event the budgets depend on and forwards the events it wants, byte for byte,
to an internal topic keyed by (tenant, project). A decider agent on that
topic handles each project's events in order, all of one project's events of
a batch in one transaction (``StreamsContext.decide``). On top of that every
decision locks the project's ``budgets`` row, so a worker that lost its
partition in a rebalance but has not noticed yet cannot spend twice.

faust's ``group_by`` would do the re-keying, but it needs a synchronous key
function and the key (tenant and project) is only known after an async
decode, hence the explicit forward.

The state lives in the ``budgets`` projection (``streams.budgets``). Each
decision is stored with its event, so a redelivered request, or a cost that
was handled before a crash, re-emits exactly the same events (same ids,
times, data), which the archive and the consumers deduplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, cast

import faust
import httpx
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic_settings import BaseSettings, SettingsConfigDict

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from schemas.catalog import EventCatalog
from schemas.models import Envelope
from schemas.registry_client import RegistryClientError
from schemas.topics import DEAD_LETTER_SUFFIX, physical_name
from streams.app import StreamsConfig, internal_topic
from streams.budgets import (
    LIFETIME,
    Budget,
    Budgets,
    InvalidBudget,
    check_event,
    crossed,
    fits,
    lock_budget,
    spent_in,
    status,
)
from streams.context import RETRIED, StreamsContext, derived_event, derived_id

log = logging.getLogger("ledgerbus.streams.budgets")

NAME = "budgets"
SOURCE = "ledgerbus.budgets"
#: Where the events the budgets depend on travel.
SOURCE_TOPICS = ("commands", "costs", "budgets", "agent-runs")
ROUTED = frozenset(
    {"agent.run_requested", "cost.recorded", "budget.set", "agent.completed", "agent.failed"}
)
INTERNAL_TOPIC = "budget-by-project"
INTERNAL_PARTITIONS = 6
BATCH = 500
BATCH_SECONDS = 0.01
#: Projects of one batch decided at once (each holds a pooled connection).
PARALLEL_PROJECTS = 4
#: What the agents wait out: Kafka, the network or the schema registry briefly away.
TRANSIENT = (OSError, KafkaError, httpx.HTTPError, RegistryClientError)

DECISIONS = Counter(
    "ledgerbus_budget_decisions_total",
    "Run requests decided (repeated: a redelivered request answered again)",
    ["outcome"],
)
ALERTS = Counter(
    "ledgerbus_budget_alerts_total", "Threshold and budget-exceeded events emitted", ["kind"]
)
ROUTED_EVENTS = Counter(
    "ledgerbus_budget_routed_total", "Events forwarded to the per-project topic"
)
HANDLED = Counter(
    "ledgerbus_budget_events_total", "Events the decider has handled, by type", ["type"]
)
FAILURES = Counter(
    "ledgerbus_budget_failures_total", "Events that failed with a bug-level error (dead-lettered)"
)


class BudgetSettings(BaseSettings):
    """``LEDGERBUS_BUDGET_*``: what happens to runs of projects without a budget."""

    model_config = SettingsConfigDict(env_prefix="LEDGERBUS_BUDGET_", extra="ignore")

    default_policy: Literal["accept", "reject"] = "accept"


class BudgetProcessor:
    """Installs the router and the decider; owns the ``budgets`` projection."""

    name = NAME

    def __init__(self) -> None:
        self.projection = Budgets()

    @property
    def projections(self) -> Sequence[Projection]:
        return [self.projection]

    def install(self, app: faust.App, config: StreamsConfig, context: StreamsContext) -> None:
        # Read here, not in __init__: `projections rebuild` builds processors too.
        settings = BudgetSettings()
        sources = app.topic(
            *(physical_name(topic, config.topic_prefix) for topic in SOURCE_TOPICS),
            value_type=bytes,
            key_type=bytes,
        )
        by_project = internal_topic(app, config, INTERNAL_TOPIC, INTERNAL_PARTITIONS)
        dead_letters = internal_topic(app, config, f"{INTERNAL_TOPIC}{DEAD_LETTER_SUFFIX}", 1)
        decider = Decider(context, self.projection, settings.default_policy == "accept")

        @app.agent(sources, name=f"{NAME}-router")
        async def route(stream: faust.StreamT[bytes]) -> None:
            async for events in batches(stream):
                await patiently("router", partial(forward, context, by_project, events))

        @app.agent(by_project, name=f"{NAME}-decider")
        async def decide(stream: faust.StreamT[bytes]) -> None:
            # faust declares only the topics it reads; this one must exist for
            # the decider's dead letters (``StreamsContext.dead_letter``).
            await dead_letters.maybe_declare()
            async for events in batches(stream):
                await patiently("decider", partial(decider.handle, events))


async def patiently(agent: str, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` until it succeeds: faust must not ack a batch that was not
    handled, and handling one twice is harmless (the decider is idempotent)."""
    delay = 0.1
    while True:
        try:
            return await work()
        except TRANSIENT as exc:
            RETRIED.labels(f"{NAME}-{agent}").inc()
            log.warning("budgets %s: %r; retrying in %.1fs", agent, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def batches(stream: faust.StreamT[bytes]) -> AsyncIterator[Sequence[faust.EventT[Any]]]:
    """Up to ``BATCH`` events at a time; faust acks them once the loop body is done."""
    return cast(faust.Stream[bytes], stream).take_events(BATCH, BATCH_SECONDS)


async def forward(
    context: StreamsContext, by_project: faust.TopicT, events: Sequence[faust.EventT[Any]]
) -> None:
    """Send the events the budgets depend on to the per-project topic and wait
    for the broker's acks, so faust commits the source offsets only after."""
    sent = []
    for event in events:
        envelope = await context.decode(event)
        if envelope is None or envelope.type not in ROUTED:
            continue
        try:
            check_event(envelope)
        except InvalidBudget as exc:
            await context.dead_letter(event, exc.reason, str(exc))
            continue
        message = event.message
        sent.append(
            await by_project.send(
                key=project_key(envelope), value=message.value, headers=message.headers
            )
        )
    await asyncio.gather(*sent)
    ROUTED_EVENTS.inc(len(sent))


def project_key(envelope: Envelope[Any]) -> bytes:
    """The internal topic's key: tenant and project, unambiguously."""
    return json.dumps([envelope.tenant_id, envelope.data.project_id]).encode()


class Decider:
    """Turns one project's events into decisions, one project per transaction."""

    def __init__(
        self, context: StreamsContext, projection: Budgets, accept_unbudgeted: bool
    ) -> None:
        self.context = context
        self.projection = projection
        self.accept_unbudgeted = accept_unbudgeted
        self._parallel = asyncio.Semaphore(PARALLEL_PROJECTS)

    async def handle(self, events: Sequence[faust.EventT[Any]]) -> None:
        """Decide a batch: projects in parallel, each project's events in order."""
        projects: dict[bytes, list[tuple[faust.EventT[Any], Envelope[Any]]]] = {}
        for event in events:
            envelope = await self.context.decode(event)
            if envelope is not None:
                projects.setdefault(project_key(envelope), []).append((event, envelope))
        await asyncio.gather(*(self._project(items) for items in projects.values()))

    async def _project(self, items: list[tuple[faust.EventT[Any], Envelope[Any]]]) -> None:
        async with self._parallel:
            try:
                await self._decide([envelope for _, envelope in items])
                return
            except Exception:
                if len(items) == 1:
                    await self._dead_letter(*items[0])
                    return
                log.warning("budgets: a batch of %d failed; one at a time", len(items))
            # One of them is broken: find it by deciding them one at a time.
            for event, envelope in items:
                try:
                    await self._decide([envelope])
                except Exception:
                    await self._dead_letter(event, envelope)

    async def _decide(self, envelopes: list[Envelope[Any]]) -> None:
        async def decide(conn: Connection) -> list[Envelope[Any]]:
            out: list[Envelope[Any]] = []
            for envelope in envelopes:
                out += await self._one(conn, envelope)
            return out

        await self.context.decide(NAME, decide)
        for envelope in envelopes:
            HANDLED.labels(envelope.type).inc()

    async def _dead_letter(self, event: faust.EventT[Any], envelope: Envelope[Any]) -> None:
        FAILURES.inc()
        log.exception("budgets: %s %s failed; dead-lettered", envelope.type, envelope.id)
        await self.context.dead_letter(
            event, "processor_error", f"budgets processor failed on {envelope.type} {envelope.id}"
        )

    async def _one(self, conn: Connection, envelope: Envelope[Any]) -> list[Envelope[Any]]:
        if envelope.type == "agent.run_requested":
            return [await self._run_requested(conn, envelope)]
        await self.projection.apply(conn, ProjectedEvent(0, envelope))
        if envelope.type == "cost.recorded":
            return await self._alerts(conn, envelope)
        return []

    async def _run_requested(self, conn: Connection, request: Envelope[Any]) -> Envelope[Any]:
        data = request.data
        budget = await lock_budget(conn, request.tenant_id, data.project_id)
        stored = await conn.fetchrow(
            "SELECT * FROM budget_runs WHERE tenant_id = $1 AND project_id = $2 "
            "AND run_id = $3 AND decision IS NOT NULL",
            request.tenant_id,
            data.project_id,
            data.run_id,
        )
        if stored is not None:
            DECISIONS.labels("repeated").inc()
            return stored_decision(self.context.catalog, request, stored)
        refusal = await self._refusal(conn, budget, request)
        accepted = refusal is None
        decision = derived_event(
            self.context,
            "agent.run_accepted" if accepted else "agent.run_rejected",
            cause=request,
            kind="decision",
            subject=data.run_id,
            data={
                "run_id": data.run_id,
                "project_id": data.project_id,
                "agent_name": data.agent_name,
                **(
                    {"reserved_micros": data.cost_estimate_micros} | work_of(request)
                    if accepted
                    else {"reason": "budget_exceeded", "detail": refusal}
                ),
            },
            time=datetime.now(UTC),
            source=SOURCE,
        )
        await self.projection.apply(conn, ProjectedEvent(0, decision))
        DECISIONS.labels("accepted" if accepted else "rejected").inc()
        return decision

    async def _refusal(
        self, conn: Connection, budget: Budget, request: Envelope[Any]
    ) -> str | None:
        """Why the run may not start, or None when it may."""
        estimate = request.data.cost_estimate_micros
        amount = budget.amount_micros
        if amount is None:
            if self.accept_unbudgeted:
                return None
            return (
                f"no budget is set for project {budget.project_id} and the default policy rejects"
            )
        start = budget.period_start(request.time)
        spent = await spent_in(conn, budget.tenant_id, budget.project_id, start)
        reserved = budget.reserved_micros
        if fits(spent=spent, reserved=reserved, estimate=estimate, amount=amount):
            return None
        return (
            f"spent {spent} + reserved {reserved} + estimate {estimate} exceeds budget "
            f"{amount} micro-USD ({_period_name(budget, start)})"
        )

    async def _alerts(self, conn: Connection, cost: Envelope[Any]) -> list[Envelope[Any]]:
        """Thresholds the cost's period has reached and nobody announced yet, plus
        the ones this very cost announced before (a redelivery after a crash)."""
        data = cost.data
        budget = await lock_budget(conn, cost.tenant_id, data.project_id)
        amount = budget.amount_micros
        if amount is None:
            return []
        start = budget.period_start(cost.time)
        spent = await spent_in(conn, cost.tenant_id, data.project_id, start)
        reached = crossed(spent, amount)
        if not reached:
            return []
        key = (cost.tenant_id, data.project_id, start, amount)
        marks = {
            row["threshold_percent"]: row
            for row in await conn.fetch(
                "SELECT * FROM budget_thresholds WHERE tenant_id = $1 AND project_id = $2 "
                "AND period_start = $3 AND amount_micros = $4",
                *key,
            )
        }
        exceeded = await conn.fetchrow(
            "SELECT * FROM budget_exceeded WHERE tenant_id = $1 AND project_id = $2 "
            "AND period_start = $3 AND amount_micros = $4",
            *key,
        )
        out: list[Envelope[Any]] = []
        period = None if start == LIFETIME else start
        common = {"project_id": data.project_id, "amount_micros": amount, "period_start": period}
        for threshold in reached:
            mark = marks.get(threshold)
            payload = {
                **common,
                "threshold_percent": threshold,
                "spent_micros": spent,
                "status": status(spent, amount),
            }
            out += await self._alert(conn, cost, mark, "budget.threshold_crossed", payload)
        if spent >= amount:
            payload = {**common, "spent_micros": spent, "run_id": data.run_id}
            out += await self._alert(conn, cost, exceeded, "project.budget_exceeded", payload)
        return out

    async def _alert(
        self,
        conn: Connection,
        cost: Envelope[Any],
        mark: Any,
        event_type: str,
        data: dict[str, Any],
    ) -> list[Envelope[Any]]:
        """The alert to emit: a new one (applied, so it is marked), the stored one if
        this cost caused it, or none."""
        if mark is not None:
            if mark["causation_id"] != str(cost.id):
                return []
            return [stored_alert(self.context.catalog, cost.tenant_id, event_type, mark)]
        alert = derived_event(
            self.context,
            event_type,
            cause=cost,
            kind="alert",
            subject=data["project_id"],
            data=data,
            time=datetime.now(UTC),
            source=SOURCE,
        )
        # Derived from what it announces, not from the cost: two workers that
        # both see the same crossing emit the same event.
        period = (data["period_start"] or LIFETIME).isoformat()
        what = (
            f"threshold-{data['threshold_percent']}" if "threshold_percent" in data else "exceeded"
        )
        alert = alert.model_copy(
            update={
                "id": derived_id(
                    f"{cost.tenant_id}/{data['project_id']}/{period}/{data['amount_micros']}", what
                )
            }
        )
        await self.projection.apply(conn, ProjectedEvent(0, alert))
        ALERTS.labels("threshold" if "threshold_percent" in data else "exceeded").inc()
        return [alert]


def work_of(request: Envelope[Any]) -> dict[str, Any]:
    """What an accepted run's agent needs to start: the task (still sealed if it was)."""
    data = request.data
    return {
        "task": None if data.sealed_task else data.task,
        "sealed_task": data.sealed_task,
        "parent_run_id": data.parent_run_id,
    }


def stored_decision(catalog: EventCatalog, request: Envelope[Any], run: Any) -> Envelope[Any]:
    """The decision recorded in a ``budget_runs`` row, exactly as first emitted for ``request``."""
    tenant_id = request.tenant_id
    accepted = run["decision"] == "accepted"
    data: dict[str, Any] = {
        "run_id": run["run_id"],
        "project_id": run["project_id"],
        "agent_name": run["agent_name"],
    }
    if accepted:
        data |= {"reserved_micros": run["reserved_micros"]} | work_of(request)
    else:
        data |= {"reason": run["reason"], "detail": run["detail"]}
    return _event(
        catalog,
        "agent.run_accepted" if accepted else "agent.run_rejected",
        tenant_id,
        subject=run["run_id"],
        row=run,
        event_id=run["decision_event_id"],
        time=run["decided_at"],
        data=data,
    )


def stored_alert(
    catalog: EventCatalog, tenant_id: str, event_type: str, mark: Any
) -> Envelope[Any]:
    """The threshold or budget-exceeded event recorded in a marker row."""
    start = mark["period_start"]
    data: dict[str, Any] = {
        "project_id": mark["project_id"],
        "amount_micros": mark["amount_micros"],
        "spent_micros": mark["spent_micros"],
        "period_start": None if start == LIFETIME else start,
    }
    if event_type == "budget.threshold_crossed":
        data |= {"threshold_percent": mark["threshold_percent"], "status": mark["status"]}
    else:
        data["run_id"] = mark["run_id"]
    return _event(
        catalog,
        event_type,
        tenant_id,
        subject=mark["project_id"],
        row=mark,
        event_id=mark["event_id"],
        time=mark["time"],
        data=data,
    )


def _event(
    catalog: EventCatalog,
    event_type: str,
    tenant_id: str,
    *,
    subject: str,
    row: Any,
    event_id: Any,
    time: datetime,
    data: dict[str, Any],
) -> Envelope[Any]:
    return catalog.get(event_type).envelope_model.model_validate(
        {
            "id": event_id,
            "type": event_type,
            "source": SOURCE,
            "subject": subject,
            "tenant_id": tenant_id,
            "time": time,
            "correlation_id": row["correlation_id"],
            "causation_id": row["causation_id"],
            "data": data,
        }
    )


def _period_name(budget: Budget, start: datetime) -> str:
    if start == LIFETIME:
        return "no period"
    return f"{budget.period} period from {start.isoformat()}"
