"""The agent SDK: what an agent's author writes against.

An agent is a class with one coroutine, ``handle(task) -> AgentResult``, run
in its own process by ``consumers.agent_runtime.AgentRuntime``. Everything an
agent does to the world goes through the methods here (``complete``,
``handoff``, ``send``, ``request_approval``, ``step``): each is a *step* of
the run whose result is kept, so a run resumed after an approval, in any
process, replays its earlier steps instead of repeating them. Code with side
effects of its own belongs in ``step``.
"""

from __future__ import annotations

import contextvars
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Protocol, TypeVar

from schemas.models import Envelope
from schemas.models.enums import FailureReason, RiskLevel


@dataclass(frozen=True, slots=True)
class AgentTask:
    """One run's work, as the agent receives it (opened, if it came sealed)."""

    tenant_id: str
    run_id: str
    project_id: str
    agent_name: str
    task: str
    instructions: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    handed_off_by: str | None = None
    """The agent that handed this work off, or None when a person or service asked."""
    parent_run_id: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class AgentResult:
    output: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """An opened ``agent.message`` or ``agent.handoff``: the signature was checked."""

    sender: str
    payload: Mapping[str, Any]
    event: Envelope[Any]


class RunFailed(Exception):
    """Ends the run as ``agent.failed`` with ``reason`` (e.g. the approval was denied)."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RunEffects(Protocol):
    """What the runtime does for the run in hand; each call is one journaled step."""

    async def complete(
        self, messages: Sequence[Mapping[str, Any]], model: str | None, **options: Any
    ) -> str: ...

    async def handoff(
        self,
        to: str,
        instructions: str,
        context: Mapping[str, Any],
        cost_estimate_micros: int,
    ) -> str: ...

    async def send(self, to: str, payload: Mapping[str, Any]) -> str: ...

    async def request_approval(
        self, action: str, risk: RiskLevel, timeout: timedelta, details: str | None
    ) -> None: ...

    async def step(self, name: str, work: Callable[[], Awaitable[Any]]) -> Any: ...


current_run: contextvars.ContextVar[RunEffects] = contextvars.ContextVar("ledgerbus_current_run")


def _effects() -> RunEffects:
    try:
        return current_run.get()
    except LookupError:
        raise RuntimeError(
            "agent effects (complete, handoff, send, request_approval, step) only work "
            "inside handle(), while the runtime executes a run"
        ) from None


class Middleware:
    """Hooks around every execution of a run (compliance checks, metrics, …).

    ``before_execute`` may raise to refuse the run; it then fails with that error.
    """

    async def before_execute(self, agent: Agent, task: AgentTask) -> None:
        return None

    async def after_execute(
        self, agent: Agent, task: AgentTask, result: AgentResult | None, error: BaseException | None
    ) -> None:
        return None


F = TypeVar("F", bound=Callable[..., Awaitable[None]])

_SUBSCRIBES = "__ledgerbus_subscribes__"


def on(event_type: str) -> Callable[[F], F]:
    """Mark an agent method as a subscriber of ``event_type`` (of the agent's tenant).

    It is called with the event (an ``Envelope``), or with a ``Message`` for the
    sealed types ``agent.message`` and ``agent.handoff`` addressed to the agent.
    """

    def mark(method: F) -> F:
        setattr(method, _SUBSCRIBES, (*getattr(method, _SUBSCRIBES, ()), event_type))
        return method

    return mark


class Agent(ABC):
    """Base class of every agent; subclasses implement ``handle``."""

    #: Seconds one execution of ``handle`` may take before the run fails with ``timeout``.
    timeout: ClassVar[float] = 300.0
    #: Model for ``complete`` when the call names none (else the LLM settings' model).
    model: str | None = None
    middleware: Sequence[Middleware] = ()
    on = staticmethod(on)

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def handle(self, task: AgentTask) -> AgentResult: ...

    def subscriptions(self) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
        """Event type → this instance's subscriber methods (from ``@on``)."""
        found: dict[str, list[Callable[[Any], Awaitable[None]]]] = {}
        for attribute in dir(type(self)):
            for event_type in getattr(getattr(type(self), attribute, None), _SUBSCRIBES, ()):
                found.setdefault(event_type, []).append(getattr(self, attribute))
        return found

    async def complete(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **options: Any
    ) -> str:
        """Ask the LLM; the reply's text. Records ``cost.recorded`` once per call."""
        return await _effects().complete(messages, model or self.model, **options)

    async def handoff(
        self,
        to: str,
        *,
        instructions: str,
        context: Mapping[str, Any] | None = None,
        cost_estimate_micros: int = 0,
    ) -> str:
        """Hand work to agent ``to``: a sealed ``agent.handoff`` and a new run request
        in the same correlation, subject to the same budget check. The new run's id."""
        return await _effects().handoff(to, instructions, context or {}, cost_estimate_micros)

    async def send(self, to: str, payload: Mapping[str, Any]) -> str:
        """A sealed, signed ``agent.message`` to agent ``to``; the message's event id."""
        return await _effects().send(to, payload)

    async def request_approval(
        self,
        *,
        action: str,
        risk: RiskLevel | str = RiskLevel.HIGH,
        timeout: timedelta = timedelta(hours=1),
        details: str | None = None,
    ) -> None:
        """Ask a person to approve ``action``. The run is suspended durably until the
        verdict: it returns when approved (possibly in another process, after a
        restart); a denial or expiry ends the run as failed."""
        await _effects().request_approval(action, RiskLevel(risk), timeout, details)

    async def step(self, name: str, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work`` once per run: a resumed run gets the recorded (JSON) result."""
        return await _effects().step(name, work)


class AgentRegistry:
    """Agent classes by name, for ``ledgerbus agent run NAME``."""

    def __init__(self) -> None:
        self._classes: dict[str, Callable[[str], Agent]] = {}

    def register(self, name: str, factory: Callable[[str], Agent]) -> None:
        if name in self._classes:
            raise ValueError(f"an agent named {name!r} is already registered")
        self._classes[name] = factory

    def create(self, name: str) -> Agent:
        try:
            factory = self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes)) or "none"
            raise LookupError(f"no agent named {name!r}; registered agents: {known}") from None
        return factory(name)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes


#: The registry the CLI reads; teams add their agents with ``agent_registry.register``.
agent_registry = AgentRegistry()
