"""``POST /v1/commands`` and ``POST /v1/events``: validated publishing over HTTP.

Both validate every event against its schema before anything is published (a
batch is all or nothing), take the tenant from the credential only, honour
``Idempotency-Key`` and answer 202 with where each event landed.

The split is about trust. Commands ask a processor to decide something and
each needs its own permission; the fields naming who asks are stamped from the
credential. Domain events come from external producers, but never the types
that only ledgerbus itself emits: projections trust archived events, so a
client able to publish ``approval.approved`` could forge a decision.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.auth.dependencies import AUTH_FAILURES, admit, authenticate, require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.idempotency import (
    HEADER,
    REPLAYED_HEADER,
    Answer,
    Idempotency,
    IdempotencyConflict,
    IdempotencyUnavailable,
    InvalidIdempotencyKey,
    check_key,
    fingerprint,
)
from gateway.problems import Problem, problem_responses, validation_errors
from gateway.services import GatewayServices, Services
from producers.publisher import Delivery, InvalidEvent, PublishError, build_event
from schemas.catalog import EventType, UnknownEventType
from schemas.models import Envelope
from schemas.registry_client import RegistryClientError

PUBLISH_SECONDS = Histogram(
    "ledgerbus_gateway_publish_seconds",
    "From handing a request's events to the publisher to Kafka's confirmation",
    ["endpoint"],
)
MAX_ERRORS = 100
"""Errors listed in one 422; a batch of garbage must not make a huge answer."""


@dataclass(frozen=True)
class Command:
    permission: Permission
    #: Data fields taken from the credential: who asks is not the client's to say.
    stamp: Callable[[Principal], dict[str, Any]]


def _by(field: str) -> Callable[[Principal], dict[str, Any]]:
    return lambda principal: {field: principal.subject}


COMMANDS: dict[str, Command] = {
    "agent.run_requested": Command(Permission.AGENTS_EXECUTE, _by("requested_by")),
    "approval.decision_submitted": Command(
        Permission.APPROVALS_APPROVE,
        lambda principal: {
            "decider": principal.subject,
            "decider_permissions": sorted(principal.permissions),
        },
    ),
    "budget.set": Command(Permission.BUDGETS_MANAGE, _by("set_by")),
    "workflow.started": Command(Permission.WORKFLOWS_CREATE, _by("initiated_by")),
    "compliance.erasure_requested": Command(Permission.EVENTS_PUBLISH, _by("requested_by")),
}

_BUDGETS = "the budget processor"
_APPROVALS = "the approvals processor"
_DISPATCHER = "the webhook dispatcher"
_WEBHOOKS_API = "the webhooks API (/v1/webhooks)"
_COMPLIANCE = "ledgerbus's compliance jobs"
#: Event types only ledgerbus emits, and who does.
RESERVED: dict[str, str] = {
    "agent.run_accepted": _BUDGETS,
    "agent.run_rejected": _BUDGETS,
    "budget.threshold_crossed": _BUDGETS,
    "project.budget_exceeded": _BUDGETS,
    "approval.approved": _APPROVALS,
    "approval.denied": _APPROVALS,
    "approval.expired": _APPROVALS,
    "approval.decision_rejected": _APPROVALS,
    "webhook.subscribed": _WEBHOOKS_API,
    "webhook.updated": _WEBHOOKS_API,
    "webhook.deleted": _WEBHOOKS_API,
    "webhook.delivery_succeeded": _DISPATCHER,
    "webhook.delivery_failed": _DISPATCHER,
    "webhook.delivery_dead_lettered": _DISPATCHER,
    "audit.checkpoint": "the audit checkpointer",
    "agent.registered": "the agent directory (POST /v1/agents)",
    "compliance.subject_erased": _COMPLIANCE,
    "compliance.retention_applied": _COMPLIANCE,
}


class EventIn(BaseModel):
    """One event as a client sends it; the gateway adds id, time, source and tenant."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, examples=["cost.recorded"])
    subject: str = Field(min_length=1, description="Aggregate id; also the Kafka key")
    data: dict[str, Any] = Field(description="The payload, as the type's schema describes")
    correlation_id: str | None = None
    causation_id: str | None = None


class Accepted(BaseModel):
    """Where a published event landed."""

    id: str
    type: str
    subject: str
    topic: str
    partition: int
    offset: int


class AcceptedBatch(BaseModel):
    events: list[Accepted]


_EVENT_SCHEMA = EventIn.model_json_schema()
_BATCH_SCHEMA = {
    "type": "object",
    "properties": {"events": {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1}},
    "required": ["events"],
    "additionalProperties": False,
}


def _body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


FieldPath = tuple[str | int, ...]
"""Where in the body: ``("events", 3, "data", "cost_micros")`` → ``events.3.data.cost_micros``."""


class _Invalid(Exception):
    """Why one event of a request cannot be published: ``{path, reason}`` items."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _problem(at: FieldPath, reason: str, **extra: Any) -> dict[str, Any]:
    return {"path": ".".join(map(str, at)), "reason": reason, **extra}


def _error(at: FieldPath, reason: str, **extra: Any) -> _Invalid:
    return _Invalid([_problem(at, reason, **extra)])


def _prefixed(exc: ValidationError, at: FieldPath) -> _Invalid:
    return _Invalid(
        validation_errors({**error, "loc": (*at, *error["loc"])} for error in exc.errors())
    )


def _given(item: Any, at: FieldPath) -> EventIn:
    if not isinstance(item, dict):
        raise _error(at, "an event must be a JSON object")
    if "tenant_id" in item:
        raise _error((*at, "tenant_id"), "the tenant comes from your credential: leave it out")
    try:
        return EventIn.model_validate(item)
    except ValidationError as exc:
        raise _prefixed(exc, at) from None


def _event_type(services: GatewayServices, given: EventIn, at: FieldPath) -> EventType:
    try:
        return services.catalog.get(given.type)
    except UnknownEventType as exc:
        raise _error((*at, "type"), str(exc), close_matches=exc.close_matches) from None


def _envelope(
    event_type: EventType,
    given: EventIn,
    at: FieldPath,
    principal: Principal,
    stamped: dict[str, Any],
) -> Envelope[Any]:
    """The event, validated as JSON (bytes are base64) against the type's model."""
    forged = [
        _problem((*at, "data", field), f"set from your credential ({value}): leave it out")
        for field, value in stamped.items()
        if field in given.data and given.data[field] != value
    ]
    if forged:
        raise _Invalid(forged)
    model = event_type.model
    try:
        data = model.__pydantic_validator__.validate_json(json.dumps({**given.data, **stamped}))
    except ValidationError as exc:
        raise _prefixed(exc, (*at, "data")) from None
    try:
        return build_event(
            event_type,
            subject=given.subject,
            tenant_id=principal.tenant_id,
            data=data,
            source="gateway",
            correlation_id=given.correlation_id,
            causation_id=given.causation_id,
        )
    except InvalidEvent as exc:
        assert isinstance(exc.__cause__, ValidationError)
        raise _prefixed(exc.__cause__, at) from None


def _domain_event(
    services: GatewayServices, item: Any, at: FieldPath, principal: Principal
) -> Envelope[Any]:
    given = _given(item, at)
    event_type = _event_type(services, given, at)
    if event_type.name in COMMANDS:
        raise _error((*at, "type"), f"{event_type.name} is a command: POST it to /v1/commands")
    owner = RESERVED.get(event_type.name)
    if owner is not None:
        raise _error(
            (*at, "type"),
            f"only {owner} emits {event_type.name}: projections trust archived events, "
            "so clients may not publish it",
        )
    return _envelope(event_type, given, at, principal, {})


def _refuse(summary: str, errors: list[dict[str, Any]]) -> Problem:
    detail = "; ".join(f"{error['path'] or '(body)'}: {error['reason']}" for error in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return Problem(422, f"{summary}: {detail}{more}", errors=errors[:MAX_ERRORS])


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise Problem(400, f"the body is not valid JSON: {exc}") from None


async def _publish(
    services: GatewayServices, events: Sequence[Envelope[Any]], endpoint: str
) -> list[Delivery]:
    began = time.perf_counter()
    try:
        deliveries = await services.publisher.publish_many(events)
    except (PublishError, KafkaError, RegistryClientError, httpx.HTTPError) as exc:
        raise Problem(503, f"Kafka did not confirm every event, retry: {exc}") from None
    PUBLISH_SECONDS.labels(endpoint).observe(time.perf_counter() - began)
    return deliveries


def _accepted(event: Envelope[Any], delivery: Delivery) -> dict[str, Any]:
    return {
        "id": str(delivery.event_id),
        "type": delivery.type,
        "subject": event.subject,
        "topic": delivery.topic,
        "partition": delivery.partition,
        "offset": delivery.offset,
    }


async def _answer(
    request: Request,
    key: str | None,
    body: Any,
    principal: Principal,
    services: GatewayServices,
    response: Response,
    publish: Callable[[], Awaitable[Answer]],
) -> JSONResponse:
    """Run ``publish`` once per ``Idempotency-Key`` (or just run it, without one)."""
    headers = dict(response.headers)  # RateLimit-* set by the auth dependency
    if key is None:
        answer = await publish()
    else:
        settings = services.settings
        store = Idempotency(
            services.redis, settings.redis_key_prefix, settings.idempotency_ttl_seconds
        )
        try:
            outcome = await store.run(
                principal.tenant_id,
                check_key(key),
                fingerprint(request.method, request.url.path, body),
                publish,
            )
        except InvalidIdempotencyKey as exc:
            raise Problem(400, str(exc)) from None
        except IdempotencyConflict as exc:
            retry = {"Retry-After": "1"} if exc.in_progress else {}
            raise Problem(409, str(exc), headers=retry) from None
        except IdempotencyUnavailable as exc:
            raise Problem(503, str(exc)) from None
        answer = outcome.answer
        if outcome.replayed:
            headers[REPLAYED_HEADER] = "true"
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


async def command_caller(
    response: Response,
    principal: Annotated[Principal, Depends(authenticate)],
    services: Services,
) -> Principal:
    """Counts the request against the rate limits (once) and refuses callers who may
    issue no command at all; the route checks the command's own permission once it
    knows the type."""
    held = [
        command.permission for command in COMMANDS.values() if principal.can(command.permission)
    ]
    response.headers.update(
        await admit(services, principal, held[0] if held else Permission.EVENTS_PUBLISH)
    )
    return principal


Commander = Annotated[Principal, Depends(command_caller)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Retries with the same key and body get the first answer (header "
        "Idempotent-Replayed: true) and publish nothing; another body → 409. Kept for "
        "LEDGERBUS_IDEMPOTENCY_TTL_SECONDS (24 h by default).",
    ),
]
Publisher = Annotated[Principal, Depends(require(Permission.EVENTS_PUBLISH))]


def events_router() -> APIRouter:
    router = APIRouter(prefix="/v1", responses=problem_responses(401, 403, 429))

    @router.post(
        "/commands",
        tags=["commands"],
        status_code=202,
        response_model=Accepted,
        responses=problem_responses(400, 409, 413, 422, 503),
        openapi_extra=_body_doc(_EVENT_SCHEMA),
    )
    async def publish_command(
        request: Request,
        response: Response,
        principal: Commander,
        services: Services,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Ask a processor to act: the command's type decides the permission needed
        (``agent.run_requested`` → agents:execute, ``approval.decision_submitted`` →
        approvals:approve, ``budget.set`` → budgets:manage, ``workflow.started`` →
        workflows:create, ``compliance.erasure_requested`` → events:publish). Who asks
        (``requested_by``, ``decider``...) is taken from the credential."""
        body = await _json_body(request)
        try:
            given = _given(body, ())
            event_type = _event_type(services, given, ())
            command = COMMANDS.get(event_type.name)
            if command is None:
                raise _error(
                    ("type",),
                    f"{event_type.name} is not a command; commands are "
                    f"{', '.join(COMMANDS)} (publish domain events with POST /v1/events)",
                )
            if not principal.can(command.permission):
                AUTH_FAILURES.labels("forbidden").inc()
                raise Problem(
                    403,
                    f"role {principal.role.value} lacks permission {command.permission.value}"
                    f" needed for {event_type.name}",
                    permission=command.permission.value,
                )
            event = _envelope(event_type, given, (), principal, command.stamp(principal))
        except _Invalid as exc:
            raise _refuse("invalid command, nothing published", exc.errors) from None

        async def publish() -> Answer:
            (delivery,) = await _publish(services, [event], "commands")
            return Answer(202, _accepted(event, delivery))

        return await _answer(request, idempotency_key, body, principal, services, response, publish)

    @router.post(
        "/events",
        tags=["events"],
        status_code=202,
        response_model=Accepted | AcceptedBatch,
        responses=problem_responses(400, 409, 413, 422, 503),
        openapi_extra=_body_doc({"oneOf": [_EVENT_SCHEMA, _BATCH_SCHEMA]}),
    )
    async def publish_events(
        request: Request,
        response: Response,
        principal: Publisher,
        services: Services,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Publish one domain event, or ``{"events": [...]}`` (at most
        ``LEDGERBUS_MAX_BATCH_EVENTS``): all are validated first, and if any is
        invalid none is published. Commands and the types only ledgerbus emits
        (verdicts, run decisions, budget alerts, webhook and audit events) are refused."""
        body = await _json_body(request)
        batch = isinstance(body, dict) and "events" in body
        items = _batch_items(body, services.settings.max_batch_events) if batch else [body]
        events: list[Envelope[Any]] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                events.append(
                    _domain_event(services, item, ("events", index) if batch else (), principal)
                )
            except _Invalid as exc:
                errors += exc.errors
        if errors:
            invalid = len(items) - len(events)
            summary = f"{invalid} of {len(items)} events invalid" if batch else "invalid event"
            raise _refuse(f"{summary}, nothing published", errors)

        async def publish() -> Answer:
            deliveries = await _publish(services, events, "events")
            accepted = [_accepted(e, d) for e, d in zip(events, deliveries, strict=True)]
            return Answer(202, {"events": accepted} if batch else accepted[0])

        return await _answer(request, idempotency_key, body, principal, services, response, publish)

    return router


def _batch_items(body: dict[str, Any], limit: int) -> list[Any]:
    if set(body) != {"events"}:
        extra = sorted(set(body) - {"events"})
        raise _refuse(
            "invalid batch, nothing published",
            [_problem((extra[0],), "a batch holds only 'events'")],
        )
    items = body["events"]
    if not isinstance(items, list) or not items:
        raise _refuse(
            "invalid batch, nothing published",
            [_problem(("events",), "must be a non-empty list of events")],
        )
    if len(items) > limit:
        raise Problem(
            413,
            f"a batch holds at most {limit} events, got {len(items)}; split it",
            max_batch_events=limit,
        )
    return items
