"""Runs one agent as a consumer-group member: runs, approvals, sealed messages.

Every process of an agent joins the group ``ledgerbus-agent.<tenant>.<name>``,
so N processes share the runs (competing consumers). A run starts from its
``agent.run_accepted`` (the budget check has passed); the runtime claims it in
the run journal (never two executions at once), opens its sealed task (if the
work was handed off by another agent), announces ``agent.started``, runs the
agent's ``handle`` under the middleware and the run's timeout, and ends it with
``agent.completed`` or ``agent.failed``. A run that asks for approval is
suspended in the journal; the verdict, seen by any process of the agent,
resumes it there, replaying the steps already done.

Sealed traffic is opened here and only here: a box that fails any check is
dead-lettered with the reason and never reaches the agent's code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord
from prometheus_client import Counter

from consumers.agent import Agent, AgentResult, AgentTask, Message, RunFailed, current_run
from consumers.dead_letters import DeadLetters
from consumers.identity import AgentIdentity
from consumers.key_directory import AgentKey, KeyDirectory
from consumers.llm import LLMClient, RunRef
from consumers.replay_guard import ReplayGuard
from consumers.run_journal import (
    AcceptedRecord,
    Claim,
    ClaimStatus,
    RunJournal,
    RunKey,
    verdict_step,
)
from consumers.runtime import ConsumerConfig, EventConsumer, PermanentError
from consumers.sealing import Opener, Rejected, seal
from producers.publisher import Publisher, build_event
from schemas.catalog import EventCatalog
from schemas.models import Envelope
from schemas.models.enums import AgentStatus, FailureReason, RiskLevel
from schemas.serde import EventDeserializer

log = logging.getLogger(__name__)

RUNS = Counter("ledgerbus_agent_runs_total", "Run executions by outcome", ["agent", "outcome"])

#: Namespace of the ids of events a run emits: replaying a step re-emits the same ids,
#: which the archive and the processors deduplicate.
_RUN_EVENTS = uuid.UUID("6c656467-6572-6275-732d-72756e732d31")

#: Event types whose verdict resumes or ends a run waiting for approval.
VERDICTS = {
    "approval.approved": "approved",
    "approval.denied": "denied",
    "approval.expired": "expired",
}
_VERDICT_FAILURE = {
    "denied": FailureReason.APPROVAL_DENIED,
    "expired": FailureReason.APPROVAL_EXPIRED,
}


class _Suspended(BaseException):
    """Unwinds ``handle`` when the run starts waiting for an approval (not an error:
    a BaseException, so agent code catching ``Exception`` does not swallow it)."""


@dataclass(frozen=True)
class AgentRuntimeSettings:
    tenant_id: str
    instance_id: str
    lease: timedelta = timedelta(seconds=15)
    heartbeat_seconds: float = 5.0
    #: How old a sealed message may be when it arrives.
    message_window: timedelta = timedelta(minutes=5)
    #: How old a sealed task may be: queued work waits for an agent to come up.
    task_window: timedelta = timedelta(hours=24)
    key_grace: timedelta = timedelta(hours=1)
    #: How long a sender waits for a recipient to appear in the key directory.
    recipient_wait: timedelta = timedelta(seconds=30)
    #: How often the process forgets message ids too old to be replayed.
    purge_interval: timedelta = timedelta(hours=1)
    #: Model of every LLM call when set (an operator's override), else the call's or agent's.
    llm_model: str | None = None


class AgentRuntime:
    """One agent process's behaviour; ``handlers`` plug into an ``EventConsumer``."""

    def __init__(
        self,
        agent: Agent,
        *,
        settings: AgentRuntimeSettings,
        catalog: EventCatalog,
        deserializer: EventDeserializer,
        publisher: Publisher,
        journal: RunJournal,
        identity: AgentIdentity,
        directory: KeyDirectory,
        opener: Opener,
        replay_guard: ReplayGuard,
        llm: LLMClient | None,
    ) -> None:
        self.agent = agent
        self.settings = settings
        self.catalog = catalog
        self.deserializer = deserializer
        self.publisher = publisher
        self.journal = journal
        self.identity = identity
        self.directory = directory
        self.opener = opener
        self.replay_guard = replay_guard
        self.llm = llm
        self.active: dict[str, asyncio.Task[Any]] = {}
        self._subscribers = agent.subscriptions()

    @property
    def name(self) -> str:
        return self.agent.name

    def handlers(self) -> dict[str, Callable[[Envelope[Any], ConsumerRecord], Awaitable[None]]]:
        """Record handlers by event type, for ``EventConsumer(..., with_records=True)``."""
        handlers: dict[str, Callable[[Envelope[Any], ConsumerRecord], Awaitable[None]]] = {
            event_type: self._subscriber(event_type) for event_type in self._subscribers
        }
        handlers["agent.run_accepted"] = self.on_run_accepted
        handlers["agent.message"] = self.on_sealed
        handlers["agent.handoff"] = self.on_sealed
        for event_type in VERDICTS:
            handlers[event_type] = self._chain(self.on_verdict, handlers.get(event_type))
        return handlers

    def topics(self, prefix: str) -> list[str]:
        """Physical topics the handlers' event types live on."""
        return sorted(
            {
                f"{prefix}ledgerbus.{self.catalog.get(event_type).topic.name}"
                for event_type in self.handlers()
            }
        )

    # -- identity and liveness --------------------------------------------------------------

    async def register(self) -> None:
        """Publish the agent's public keys (``agent.registered``)."""
        await self._publish(
            "agent.registered",
            subject=self.name,
            data=self.identity.registration(self.settings.key_grace),
        )

    async def heartbeat(self) -> None:
        await self._publish(
            "agent.heartbeat",
            subject=self.name,
            data={
                "agent_name": self.name,
                "instance_id": self.settings.instance_id,
                "key_id": self.identity.key_id,
                "status": (AgentStatus.BUSY if self.active else AgentStatus.IDLE).value,
                "active_runs": len(self.active),
            },
        )

    async def heartbeats(self) -> None:
        """Heartbeat forever, and forget old message ids every ``purge_interval``
        (run as a task; cancel to stop)."""
        purged_at = -float("inf")
        while True:
            try:
                await self.heartbeat()
                if time.monotonic() - purged_at >= self.settings.purge_interval.total_seconds():
                    await self.forget_old_messages()
                    purged_at = time.monotonic()
            except Exception:
                log.exception("%s: heartbeat failed", self.name)
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def forget_old_messages(self) -> int:
        """Purge replay-guard ids older than twice the longest seal window: a replay
        of one is refused as stale before the guard is asked. Returns how many."""
        keep = 2 * max(self.settings.task_window, self.settings.message_window)
        forgotten = await self.replay_guard.purge(keep)
        if forgotten:
            log.info("%s: forgot %d message ids older than %s", self.name, forgotten, keep)
        return forgotten

    # -- runs -------------------------------------------------------------------------------

    async def on_run_accepted(self, event: Envelope[Any], record: ConsumerRecord) -> None:
        data = event.data
        if event.tenant_id != self.settings.tenant_id or data.agent_name != self.name:
            return
        key = RunKey(event.tenant_id, self.name, data.run_id)
        accepted = AcceptedRecord(record.value, record.topic, record.partition, record.offset)
        claim = await self._claim(key, accepted)
        if claim is None:
            return
        try:
            task = await self._open_task(event, accepted, self.settings.task_window)
        except Rejected as exc:
            await self.journal.finish(key, ClaimStatus.FAILED)
            raise PermanentError(f"sealed task of run {key.run_id}: {exc}", exc.reason) from exc
        await self._execute(claim, event, task)

    async def _claim(self, key: RunKey, accepted: AcceptedRecord) -> Claim | None:
        """Claim the run, waiting out the lease of a process that died holding it."""
        deadline = time.monotonic() + self.settings.lease.total_seconds() + 5
        while True:
            claim = await self.journal.claim(key, accepted)
            if claim is not None:
                return claim
            state = await self.journal.status(key)
            if state is None or state[0] != ClaimStatus.RUNNING:
                if state is not None and state[0] == ClaimStatus.WAITING:
                    await self._ask_again(key)
                return None  # finished, or waiting for its approval
            if time.monotonic() > deadline:
                return None  # a live process keeps renewing it: it is running there
            await asyncio.sleep(0.5)

    async def on_verdict(self, event: Envelope[Any], record: ConsumerRecord) -> None:
        if event.tenant_id != self.settings.tenant_id:
            return
        verdict = VERDICTS[event.type]
        claim = await self.journal.resume(
            event.tenant_id,
            self.name,
            event.data.approval_id,
            {"verdict": verdict, "event_id": str(event.id)},
        )
        if claim is None:
            return  # not one of this agent's approvals, or already resumed elsewhere
        accepted_event = await self.deserializer.deserialize(claim.accepted.value)
        if verdict != "approved":
            await self._fail(
                claim.key,
                accepted_event,
                RunFailed(
                    _VERDICT_FAILURE[verdict], f"approval {event.data.approval_id} {verdict}"
                ),
                cause=event,
            )
            return
        task = await self._open_task(accepted_event, claim.accepted, window=None)
        await self._execute(claim, accepted_event, task)

    async def _open_task(
        self, accepted: Envelope[Any], record: AcceptedRecord, window: timedelta | None
    ) -> AgentTask:
        data = accepted.data
        base = AgentTask(
            tenant_id=accepted.tenant_id,
            run_id=data.run_id,
            project_id=data.project_id,
            agent_name=data.agent_name,
            task=data.task or "",
            parent_run_id=data.parent_run_id,
            correlation_id=accepted.correlation_id,
        )
        box = data.sealed_task
        if box is None:
            return base
        plaintext = await self.opener.open(
            box,
            tenant_id=accepted.tenant_id,
            message_id=str(accepted.causation_id),
            purpose="agent.run_requested",
            correlation_id=accepted.correlation_id,
            position=(record.topic, record.partition, record.offset),
            window=window if window is not None else timedelta(days=36500),
        )
        sealed = json.loads(plaintext)
        return AgentTask(
            tenant_id=base.tenant_id,
            run_id=base.run_id,
            project_id=base.project_id,
            agent_name=base.agent_name,
            task=sealed["task"],
            instructions=sealed.get("instructions"),
            context=sealed.get("context", {}),
            handed_off_by=box.sender,
            parent_run_id=base.parent_run_id,
            correlation_id=base.correlation_id,
        )

    async def _execute(self, claim: Claim, accepted: Envelope[Any], task: AgentTask) -> None:
        key = claim.key
        if claim.first:
            await self._publish(
                "agent.started",
                subject=key.run_id,
                data=self._run_fields(task) | {"instance_id": self.settings.instance_id},
                event_id=self._event_id(key, "started"),
                cause=accepted,
            )
        scope = RunScope(self, key, task, accepted)
        renewing = asyncio.create_task(self._renew(key))
        self.active[key.run_id] = renewing
        token = current_run.set(scope)
        result: AgentResult | None = None
        error: BaseException | None = None
        try:
            for middleware in self.agent.middleware:
                await middleware.before_execute(self.agent, task)
            result = await asyncio.wait_for(self.agent.handle(task), self.agent.timeout)
        except _Suspended:
            RUNS.labels(self.name, "suspended").inc()
            return
        except asyncio.CancelledError:
            await asyncio.shield(self.journal.release(key))  # another process takes it over
            raise
        except Exception as exc:
            error = exc
        finally:
            current_run.reset(token)
            renewing.cancel()
            self.active.pop(key.run_id, None)
        for middleware in self.agent.middleware:
            await middleware.after_execute(self.agent, task, result, error)
        if result is not None:
            await self._complete(claim, accepted, task, result)
        else:
            assert error is not None
            await self._fail(key, accepted, error)

    async def _renew(self, key: RunKey) -> None:
        while True:
            await asyncio.sleep(self.settings.lease.total_seconds() / 3)
            await self.journal.renew(key)

    async def _complete(
        self, claim: Claim, accepted: Envelope[Any], task: AgentTask, result: AgentResult
    ) -> None:
        key = claim.key
        duration = datetime.now(UTC) - claim.started_at
        await self._publish(
            "agent.completed",
            subject=key.run_id,
            data=self._run_fields(task)
            | {
                "instance_id": self.settings.instance_id,
                "duration_ms": max(0, int(duration.total_seconds() * 1000)),
                "result": result.output,
            },
            event_id=self._event_id(key, "completed"),
            cause=accepted,
        )
        await self.journal.finish(key, ClaimStatus.COMPLETED)
        RUNS.labels(self.name, "completed").inc()

    async def _fail(
        self,
        key: RunKey,
        accepted: Envelope[Any],
        error: BaseException,
        cause: Envelope[Any] | None = None,
    ) -> None:
        if isinstance(error, RunFailed):
            reason = error.reason
        elif isinstance(error, TimeoutError):
            reason = FailureReason.TIMEOUT
        else:
            reason = FailureReason.ERROR
        data = accepted.data
        await self._publish(
            "agent.failed",
            subject=key.run_id,
            data={
                "run_id": data.run_id,
                "project_id": data.project_id,
                "agent_name": self.name,
                "instance_id": self.settings.instance_id,
                "reason": reason.value,
                "error_class": type(error).__name__,
                "error_message": str(error) or type(error).__name__,
            },
            event_id=self._event_id(key, "failed"),
            cause=cause or accepted,
        )
        await self.journal.finish(key, ClaimStatus.FAILED)
        RUNS.labels(self.name, f"failed_{reason.value}").inc()

    async def _ask_again(self, key: RunKey) -> None:
        """Re-publish the approval request of a waiting run (same event id): the run
        may have been suspended by a process that died before publishing it."""
        request = await self.journal.waiting_request(key)
        if request is not None:
            await self.publisher.publish(
                self.catalog.get("approval.requested").envelope_model.model_validate(request)
            )

    # -- sealed traffic and subscriptions -------------------------------------------------

    async def on_sealed(self, event: Envelope[Any], record: ConsumerRecord) -> None:
        """Open a message or handoff addressed to this agent, then hand it to ``@on``."""
        box = event.data.sealed
        addressed = event.subject if event.type == "agent.message" else box.recipient
        if event.tenant_id != self.settings.tenant_id or addressed != self.name:
            return
        try:
            plaintext = await self.opener.open(
                box,
                tenant_id=event.tenant_id,
                message_id=str(event.id),
                purpose=event.type,
                correlation_id=event.correlation_id,
                position=(record.topic, record.partition, record.offset),
                sealed_at=event.time,
                window=self.settings.message_window,
            )
        except Rejected as exc:
            raise PermanentError(f"{event.type} {event.id}: {exc}", exc.reason) from exc
        message = Message(sender=box.sender, payload=json.loads(plaintext), event=event)
        for subscriber in self._subscribers.get(event.type, ()):
            await subscriber(message)

    def _subscriber(
        self, event_type: str
    ) -> Callable[[Envelope[Any], ConsumerRecord], Awaitable[None]]:
        subscribers = self._subscribers[event_type]

        async def deliver(event: Envelope[Any], record: ConsumerRecord) -> None:
            if event.tenant_id == self.settings.tenant_id:
                for subscriber in subscribers:
                    await subscriber(event)

        return deliver

    @staticmethod
    def _chain(
        first: Callable[[Envelope[Any], ConsumerRecord], Awaitable[None]],
        then: Callable[[Envelope[Any], ConsumerRecord], Awaitable[None]] | None,
    ) -> Callable[[Envelope[Any], ConsumerRecord], Awaitable[None]]:
        if then is None:
            return first

        async def both(event: Envelope[Any], record: ConsumerRecord) -> None:
            await first(event, record)
            await then(event, record)

        return both

    # -- helpers ------------------------------------------------------------------------

    async def recipient_key(self, agent_name: str) -> AgentKey:
        """The recipient's current key, waiting a while for a fresh agent to appear."""
        deadline = time.monotonic() + self.settings.recipient_wait.total_seconds()
        while True:
            found = await self.directory.current_key(self.settings.tenant_id, agent_name)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise LookupError(
                    f"agent {agent_name!r} is not in tenant {self.settings.tenant_id!r}'s "
                    "key directory: it never registered"
                )
            await asyncio.sleep(0.2)

    def _run_fields(self, task: AgentTask) -> dict[str, Any]:
        return {"run_id": task.run_id, "project_id": task.project_id, "agent_name": self.name}

    def _event_id(self, key: RunKey, what: str) -> uuid.UUID:
        return uuid.uuid5(_RUN_EVENTS, f"{key.tenant_id}/{key.agent_name}/{key.run_id}/{what}")

    def build(
        self,
        event_type: str,
        *,
        subject: str,
        data: Mapping[str, Any],
        event_id: uuid.UUID | None = None,
        cause: Envelope[Any] | None = None,
        time: datetime | None = None,
    ) -> Envelope[Any]:
        return build_event(
            self.catalog.get(event_type),
            subject=subject,
            tenant_id=self.settings.tenant_id,
            data=data,
            source=f"agent/{self.name}",
            correlation_id=None if cause is None else cause.correlation_id or str(cause.id),
            causation_id=None if cause is None else str(cause.id),
            event_id=event_id,
            time=time,
        )

    async def _publish(
        self,
        event_type: str,
        *,
        subject: str,
        data: Mapping[str, Any],
        event_id: uuid.UUID | None = None,
        cause: Envelope[Any] | None = None,
    ) -> Envelope[Any]:
        event = self.build(event_type, subject=subject, data=data, event_id=event_id, cause=cause)
        await self.publisher.publish(event)
        return event


def build_runtime(
    agent: Agent,
    *,
    settings: AgentRuntimeSettings,
    pool: asyncpg.Pool,
    catalog: EventCatalog,
    deserializer: EventDeserializer,
    publisher: Publisher,
    identity: AgentIdentity,
    llm: LLMClient | None,
) -> AgentRuntime:
    """A runtime whose directory, replay guard and run journal live in ``pool``'s database."""
    directory = KeyDirectory(pool)
    replay_guard = ReplayGuard(pool)
    return AgentRuntime(
        agent,
        settings=settings,
        catalog=catalog,
        deserializer=deserializer,
        publisher=publisher,
        journal=RunJournal(pool, settings.instance_id, settings.lease),
        identity=identity,
        directory=directory,
        opener=Opener(identity, directory, replay_guard),
        replay_guard=replay_guard,
        llm=llm,
    )


def agent_consumer(
    runtime: AgentRuntime,
    bootstrap: str,
    topic_prefix: str,
    dead_letters: AIOKafkaProducer,
    session_timeout_ms: int = 6000,
) -> EventConsumer:
    """The consumer-group member feeding ``runtime``: one group per tenant and agent."""
    group = f"{topic_prefix}ledgerbus-agent.{runtime.settings.tenant_id}.{runtime.name}"
    return EventConsumer(
        ConsumerConfig(
            bootstrap, group, runtime.topics(topic_prefix), session_timeout_ms=session_timeout_ms
        ),
        runtime.deserializer,
        runtime.handlers(),
        DeadLetters(dead_letters, group),
        with_records=True,
    )


class RunScope:
    """The effects of one execution of one run; each call is a numbered step.

    Steps are numbered in call order, so a replay of ``handle`` (after an
    approval) meets its earlier steps under the same names and gets their
    recorded results instead of doing them again.
    """

    def __init__(
        self, runtime: AgentRuntime, key: RunKey, task: AgentTask, accepted: Envelope[Any]
    ) -> None:
        self.runtime = runtime
        self.key = key
        self.task = task
        self.accepted = accepted
        self._count = 0

    def _next(self, kind: str) -> str:
        self._count += 1
        return f"{self._count}:{kind}"

    async def _memo(self, step: str, work: Callable[[], Awaitable[Any]]) -> Any:
        journal = self.runtime.journal
        recorded = await journal.step(self.key, step)
        if recorded is not None:
            return recorded["value"]
        value = await work()
        await journal.record_step(self.key, step, {"value": value})
        return value

    async def step(self, name: str, work: Callable[[], Awaitable[Any]]) -> Any:
        return await self._memo(self._next(f"step:{name}"), work)

    async def complete(
        self, messages: Sequence[Mapping[str, Any]], model: str | None, **options: Any
    ) -> str:
        step = self._next("llm")
        llm = self.runtime.llm
        chosen = self.runtime.settings.llm_model or model
        if llm is None or chosen is None:
            raise RuntimeError(f"agent {self.runtime.name!r} has no LLM or model configured")

        async def call() -> str:
            task = self.task
            reply = await llm.complete(
                RunRef(
                    tenant_id=task.tenant_id,
                    run_id=task.run_id,
                    project_id=task.project_id,
                    agent_name=self.runtime.name,
                    correlation_id=self.accepted.correlation_id or str(self.accepted.id),
                    causation_id=str(self.accepted.id),
                ),
                model=chosen,
                messages=[dict(message) for message in messages],
                event_id=self.runtime._event_id(self.key, step),
                **options,
            )
            return reply.choices[0].message.content or ""

        text: str = await self._memo(step, call)
        return text

    async def handoff(
        self, to: str, instructions: str, context: Mapping[str, Any], cost_estimate_micros: int
    ) -> str:
        step = self._next("handoff")
        runtime = self.runtime
        new_run_id = "run-" + runtime._event_id(self.key, step).hex[:20]

        async def hand_off() -> str:
            recipient = await runtime.recipient_key(to)
            plaintext = json.dumps(
                {"task": instructions, "instructions": instructions, "context": dict(context)}
            ).encode()
            handoff = self._sealed_event(
                "agent.handoff",
                subject=new_run_id,
                data={"run_id": self.task.run_id, "handoff_run_id": new_run_id},
                box_field="sealed",
                plaintext=plaintext,
                recipient=recipient,
                event_id=runtime._event_id(self.key, f"{step}/handoff"),
                cause=self.accepted,
            )
            request = self._sealed_event(
                "agent.run_requested",
                subject=new_run_id,
                data={
                    "run_id": new_run_id,
                    "project_id": self.task.project_id,
                    "agent_name": to,
                    "task": f"handoff from {runtime.name} (sealed)",
                    "risk_level": RiskLevel.MEDIUM.value,
                    "cost_estimate_micros": cost_estimate_micros,
                    "requested_by": f"agent:{runtime.name}",
                    "parent_run_id": self.task.run_id,
                },
                box_field="sealed_task",
                plaintext=plaintext,
                recipient=recipient,
                event_id=runtime._event_id(self.key, f"{step}/request"),
                cause=handoff,
            )
            await runtime.publisher.publish_many([handoff, request])
            return new_run_id

        new_run: str = await self._memo(step, hand_off)
        return new_run

    async def send(self, to: str, payload: Mapping[str, Any]) -> str:
        step = self._next("send")
        runtime = self.runtime

        async def send() -> str:
            message = self._sealed_event(
                "agent.message",
                subject=to,
                data={},
                box_field="sealed",
                plaintext=json.dumps(dict(payload)).encode(),
                recipient=await runtime.recipient_key(to),
                event_id=runtime._event_id(self.key, step),
                cause=self.accepted,
            )
            await runtime.publisher.publish(message)
            return str(message.id)

        sent: str = await self._memo(step, send)
        return sent

    def _sealed_event(
        self,
        event_type: str,
        *,
        subject: str,
        data: Mapping[str, Any],
        box_field: str,
        plaintext: bytes,
        recipient: AgentKey,
        event_id: uuid.UUID,
        cause: Envelope[Any],
    ) -> Envelope[Any]:
        """An event carrying ``plaintext`` sealed to ``recipient``, bound to the event's
        own id, type, tenant, time and correlation."""
        runtime = self.runtime
        at = datetime.now(UTC)
        correlation_id = cause.correlation_id or str(cause.id)
        box = seal(
            plaintext,
            identity=runtime.identity,
            recipient=recipient,
            tenant_id=runtime.settings.tenant_id,
            message_id=str(event_id),
            purpose=event_type,
            correlation_id=correlation_id,
            sealed_at=at,
        )
        return runtime.build(
            event_type,
            subject=subject,
            data={**data, box_field: box.model_dump()},
            event_id=event_id,
            cause=cause,
            time=at,
        )

    async def request_approval(
        self, action: str, risk: RiskLevel, timeout: timedelta, details: str | None
    ) -> None:
        step = self._next("approval")
        runtime = self.runtime
        journal = runtime.journal
        asked = await journal.step(self.key, step)
        if asked is None:
            approval_id = "apr-" + runtime._event_id(self.key, step).hex[:20]
            request = runtime.build(
                "approval.requested",
                subject=approval_id,
                data={
                    "approval_id": approval_id,
                    "run_id": self.task.run_id,
                    "agent_name": runtime.name,
                    "action": action,
                    "risk_level": risk.value,
                    "required_permission": "approvals:approve",
                    "expires_at": datetime.now(UTC) + timeout,
                    "details": details,
                },
                event_id=runtime._event_id(self.key, step),
                cause=self.accepted,
            )
            asked = {"approval_id": approval_id, "request": request.model_dump(mode="json")}
            await journal.record_step(self.key, step, asked)
        verdict = await journal.step(self.key, verdict_step(asked["approval_id"]))
        if verdict is None:
            await journal.wait_for_approval(self.key, asked["approval_id"])
            await runtime.publisher.publish(
                runtime.catalog.get("approval.requested").envelope_model.model_validate(
                    asked["request"]
                )
            )
            raise _Suspended
        if verdict["verdict"] != "approved":
            raise RunFailed(
                _VERDICT_FAILURE[verdict["verdict"]],
                f"approval {asked['approval_id']} {verdict['verdict']}",
            )
