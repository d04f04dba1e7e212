"""``/v1/webhooks``: a tenant's webhook endpoints, their delivery log, tests and redelivery.

Changes are events (``webhook.subscribed|updated|deleted``, built by
``streams.webhooks.manage`` exactly as ``ledgerbus webhooks`` builds them);
after Kafka confirms one, the gateway folds it into the subscriptions at once,
so the answer and the next read already show it (the stream processors fold
the same event again, which changes nothing). Reads come from the
``webhook_subscriptions`` and ``webhook_deliveries`` projections. Secrets
appear only in the create response. Another tenant's ids are not found (404).

The SSRF guard and the test ping read ``LEDGERBUS_WEBHOOK_*`` like the
delivery workers, once, when the router is built.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from event_store.migrate import Connection
from gateway.auth.dependencies import require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.problems import Problem, problem_responses
from gateway.services import GatewayServices, Services
from producers.publisher import PublishError
from schemas.models import Envelope
from streams.webhooks import manage
from streams.webhooks.deliveries import (
    Attempt,
    Delivery,
    attempts_of,
    get_delivery,
    list_deliveries,
)
from streams.webhooks.settings import load_webhook_settings
from streams.webhooks.ssrf import BlockedDestination, InvalidURL, SsrfGuard
from streams.webhooks.subscriptions import Subscription, of_tenant

Manager = Annotated[Principal, Depends(require(Permission.WEBHOOKS_MANAGE))]

SOURCE = "gateway"
MAX_PAGE = 500

#: No whitespace or control characters (NUL never reaches PostgreSQL or a resolver).
PRINTABLE = r"^[^\s\x00-\x1f\x7f]+$"
ID = r"^[A-Za-z0-9_.:-]{1,200}$"

Url = Annotated[
    str,
    Field(min_length=1, max_length=2048, pattern=PRINTABLE, description="Where to POST"),
]
Glob = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)]
EventTypes = Annotated[
    list[Glob],
    Field(min_length=1, max_length=50, description="Event type globs, e.g. `agent.*`"),
]


class NewWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url
    event_types: EventTypes
    ordered: bool = Field(False, description="Deliver strictly in order, holding later events")
    description: str | None = Field(None, max_length=500, pattern=r"^[^\x00]*$")


class WebhookChange(BaseModel):
    """Fields to change; omitted ones stay as they are."""

    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    event_types: EventTypes | None = None
    enabled: bool | None = None
    ordered: bool | None = None


class WebhookView(BaseModel):
    webhook_id: str
    url: str
    event_types: list[str]
    ordered: bool
    enabled: bool
    reason: str | None = Field(description="Why the endpoint was disabled, if it was")
    description: str | None

    @classmethod
    def of(cls, endpoint: Subscription) -> WebhookView:
        return cls(
            webhook_id=endpoint.webhook_id,
            url=endpoint.url,
            event_types=list(endpoint.event_types),
            ordered=endpoint.ordered,
            enabled=endpoint.enabled,
            reason=endpoint.reason,
            description=endpoint.description,
        )


class CreatedWebhook(WebhookView):
    secret: str = Field(description="The `whsec_…` signing secret: shown only in this response")


class DeliveryView(BaseModel):
    delivery_id: str = Field(description="The `webhook-id` header the endpoint received")
    webhook_id: str
    source_event_id: str
    source_event_type: str
    status: Literal["succeeded", "failed", "dead"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime
    next_attempt_at: datetime | None

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryView:
        fields: dict[str, Any] = {
            name: getattr(delivery, name) for name in cls.model_fields if name != "source_event_id"
        }
        return cls(**fields, source_event_id=str(delivery.source_event_id))


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryView]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


class AttemptView(BaseModel):
    attempt: int
    succeeded: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    response_body: str | None
    at: datetime

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptView:
        return cls(**{name: getattr(attempt, name) for name in cls.model_fields})


class DeliveryDetail(DeliveryView):
    attempt_log: list[AttemptView]


class PingResult(BaseModel):
    delivery_id: str = Field(description="The ping's `webhook-id`; it is in the delivery log")
    succeeded: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    response_body: str | None


class Recover(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(description="Failed deliveries last tried at or after this")


class Requeued(BaseModel):
    requeued: int = Field(description="Deliveries queued again, due now")


class _Tables:
    """Creates the tables the routes read, once per process."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._ready = False

    async def ensure(self, conn: Connection) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await manage.install(conn)
                self._ready = True


WebhookId = Annotated[str, Path(pattern=ID)]
DeliveryId = Annotated[str, Path(pattern=ID)]


def webhooks_router() -> APIRouter:
    settings = load_webhook_settings()
    guard = SsrfGuard(settings.allowed_networks, settings.allowed_hosts)
    tables = _Tables()
    router = APIRouter(
        prefix="/v1/webhooks", tags=["webhooks"], responses=problem_responses(401, 403, 429)
    )

    @asynccontextmanager
    async def connection(services: GatewayServices) -> AsyncIterator[Connection]:
        async with services.pool.acquire() as conn:
            await tables.ensure(conn)
            yield conn

    async def endpoint(
        services: GatewayServices, principal: Principal, webhook_id: str
    ) -> Subscription:
        async with connection(services) as conn:
            found = await manage.find(conn, principal.tenant_id, webhook_id)
        if found is None:
            raise Problem(404, f"no webhook {webhook_id!r} in this tenant")
        return found

    async def record(services: GatewayServices, event: Envelope[Any]) -> None:
        """Publish a change, then show it in the projections at once."""
        try:
            await services.publisher.publish(event)
        except PublishError as exc:
            raise Problem(503, f"the event bus did not confirm {event.type}: {exc}") from None
        async with connection(services) as conn:
            await manage.fold(conn, event)

    @router.post("", status_code=201, responses=problem_responses(422, 503))
    async def create_webhook(
        body: NewWebhook, principal: Manager, services: Services
    ) -> CreatedWebhook:
        """Subscribe an endpoint (publishes `webhook.subscribed`); the only answer that
        carries its signing secret."""
        try:
            event = await manage.subscription(
                services.catalog,
                guard,
                tenant_id=principal.tenant_id,
                url=body.url,
                event_types=body.event_types,
                ordered=body.ordered,
                description=body.description,
                source=SOURCE,
            )
        except (InvalidURL, BlockedDestination) as exc:
            raise _invalid("body.url", exc) from None
        except manage.InvalidSubscription as exc:
            raise _invalid("body.event_types", exc) from None
        await record(services, event)
        created = await endpoint(services, principal, event.data.webhook_id)
        return CreatedWebhook(**WebhookView.of(created).model_dump(), secret=event.data.secret)

    @router.get("")
    async def list_webhooks(principal: Manager, services: Services) -> list[WebhookView]:
        """The tenant's endpoints, oldest first (deleted ones are gone; secrets never shown)."""
        async with connection(services) as conn:
            endpoints = await of_tenant(conn, principal.tenant_id)
        return [WebhookView.of(found) for found in endpoints]

    @router.get("/{webhook_id}", responses=problem_responses(404))
    async def get_webhook(
        webhook_id: WebhookId, principal: Manager, services: Services
    ) -> WebhookView:
        return WebhookView.of(await endpoint(services, principal, webhook_id))

    @router.patch("/{webhook_id}", responses=problem_responses(404, 422, 503))
    async def change_webhook(
        webhook_id: WebhookId, body: WebhookChange, principal: Manager, services: Services
    ) -> WebhookView:
        """Change url, event types, enabled or ordered (publishes `webhook.updated`).
        Enabling a disabled endpoint clears its reason."""
        await endpoint(services, principal, webhook_id)
        try:
            event = await manage.update(
                services.catalog,
                guard,
                tenant_id=principal.tenant_id,
                webhook_id=webhook_id,
                url=body.url,
                event_types=body.event_types,
                enabled=body.enabled,
                ordered=body.ordered,
                source=SOURCE,
            )
        except (InvalidURL, BlockedDestination) as exc:
            raise _invalid("body.url", exc) from None
        except manage.InvalidSubscription as exc:
            raise _invalid("body", exc) from None
        await record(services, event)
        return WebhookView.of(await endpoint(services, principal, webhook_id))

    @router.delete("/{webhook_id}", status_code=204, responses=problem_responses(404, 503))
    async def delete_webhook(
        webhook_id: WebhookId, principal: Manager, services: Services
    ) -> Response:
        """Delete for good (publishes `webhook.deleted`); waiting deliveries are dropped."""
        await endpoint(services, principal, webhook_id)
        await record(
            services,
            manage.deletion(
                services.catalog,
                tenant_id=principal.tenant_id,
                webhook_id=webhook_id,
                source=SOURCE,
            ),
        )
        return Response(status_code=204)

    @router.post("/{webhook_id}/test", responses=problem_responses(404, 503))
    async def test_webhook(
        webhook_id: WebhookId, principal: Manager, services: Services
    ) -> PingResult:
        """Send one signed `webhook.ping` now, through the SSRF guard, and say what came back.
        The attempt is recorded (`webhook.delivery_succeeded|failed`) in the delivery log."""
        found = await endpoint(services, principal, webhook_id)
        async with connection(services) as conn:
            secret = await manage.signing_secret(conn, found)
        pinged = await manage.ping(services.catalog, settings, found, secret, source=SOURCE)
        await record(services, pinged.event)
        result = pinged.result
        return PingResult(
            delivery_id=pinged.delivery_id,
            succeeded=result.succeeded,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=pinged.error,
            response_body=result.response_body,
        )

    @router.get("/{webhook_id}/deliveries", responses=problem_responses(404, 422))
    async def webhook_deliveries(
        webhook_id: WebhookId,
        principal: Manager,
        services: Services,
        status: Literal["succeeded", "failed", "dead"] | None = None,
        since: Annotated[
            AwareDatetime | None, Query(description="Last attempt at or after")
        ] = None,
        until: Annotated[AwareDatetime | None, Query(description="Last attempt before")] = None,
        types: Annotated[
            list[Glob] | None, Query(description="Source event type globs (repeatable)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """The delivery log, latest attempt first; page on with `next_cursor`."""
        await endpoint(services, principal, webhook_id)
        if since is not None and until is not None and since >= until:
            raise Problem(422, "since must be before until")
        async with connection(services) as conn:
            found = await list_deliveries(
                conn,
                principal.tenant_id,
                webhook_id,
                status=status,
                since=since,
                until=until,
                event_types=types or (),
                after=_decode_cursor(cursor),
                limit=limit + 1,
            )
        page, more = found[:limit], len(found) > limit
        return DeliveryPage(
            deliveries=[DeliveryView.of(delivery) for delivery in page],
            next_cursor=_encode_cursor(page[-1]) if more else None,
        )

    @router.get("/{webhook_id}/deliveries/{delivery_id}", responses=problem_responses(404))
    async def webhook_delivery(
        webhook_id: WebhookId, delivery_id: DeliveryId, principal: Manager, services: Services
    ) -> DeliveryDetail:
        """One delivery with every attempt (status, latency, error, start of the answer)."""
        await endpoint(services, principal, webhook_id)
        async with connection(services) as conn:
            delivery = await get_delivery(conn, principal.tenant_id, delivery_id)
            if delivery is None or delivery.webhook_id != webhook_id:
                raise Problem(404, f"no delivery {delivery_id!r} of webhook {webhook_id!r}")
            attempts = await attempts_of(conn, principal.tenant_id, delivery_id)
        return DeliveryDetail(
            **DeliveryView.of(delivery).model_dump(),
            attempt_log=[AttemptView.of(attempt) for attempt in attempts],
        )

    @router.post(
        "/{webhook_id}/deliveries/{delivery_id}/retry",
        status_code=202,
        responses=problem_responses(404, 409),
    )
    async def retry_delivery(
        webhook_id: WebhookId, delivery_id: DeliveryId, principal: Manager, services: Services
    ) -> Requeued:
        """Start a new round of attempts for a failed or dead delivery, due now, under the
        same delivery id (as `ledgerbus webhooks redeliver --delivery` does)."""
        found = await endpoint(services, principal, webhook_id)
        _refuse_disabled(found)
        async with connection(services) as conn:
            try:
                count = await manage.redeliver(
                    conn, principal.tenant_id, delivery=delivery_id, webhook_id=webhook_id
                )
            except manage.NotFailed as exc:
                raise Problem(409, str(exc)) from None
            except manage.UnknownDelivery:
                logged = await get_delivery(conn, principal.tenant_id, delivery_id)
                if logged is None or logged.webhook_id != webhook_id:
                    raise Problem(
                        404, f"no delivery {delivery_id!r} of webhook {webhook_id!r}"
                    ) from None
                raise Problem(
                    409,
                    f"delivery {delivery_id} is {logged.status} and no longer queued "
                    f"({'a test ping' if logged.source_event_type == manage.PING else 'expired'}):"
                    " nothing to retry",
                ) from None
        return Requeued(requeued=count)

    @router.post(
        "/{webhook_id}/recover", status_code=202, responses=problem_responses(404, 409, 422)
    )
    async def recover_deliveries(
        webhook_id: WebhookId, body: Recover, principal: Manager, services: Services
    ) -> Requeued:
        """Queue again every failed or dead delivery of the endpoint last tried at or after
        `since` (as `ledgerbus webhooks redeliver --failed-since` does, for one endpoint)."""
        found = await endpoint(services, principal, webhook_id)
        _refuse_disabled(found)
        async with connection(services) as conn:
            count = await manage.redeliver(
                conn, principal.tenant_id, failed_since=body.since, webhook_id=webhook_id
            )
        return Requeued(requeued=count)

    return router


def _invalid(path: str, reason: object) -> Problem:
    """A 422 shaped like a validation error: ``errors`` names the field."""
    return Problem(422, str(reason), errors=[{"path": path, "reason": str(reason)}])


def _refuse_disabled(endpoint: Subscription) -> None:
    """Redelivering to a disabled endpoint would queue attempts nobody makes."""
    if not endpoint.enabled:
        raise Problem(
            409,
            f"webhook {endpoint.webhook_id} is disabled ({endpoint.reason or 'by request'}); "
            "enable it first (PATCH enabled=true)",
        )


def _encode_cursor(delivery: Delivery) -> str:
    raw = f"{delivery.last_attempt_at.isoformat()}|{delivery.delivery_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        at, _, delivery_id = base64.urlsafe_b64decode(cursor).decode().partition("|")
        if re.fullmatch(ID, delivery_id) is None:
            raise ValueError(delivery_id)
        return datetime.fromisoformat(at), delivery_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Problem(
            422,
            "cursor is not one this API gave",
            errors=[{"path": "query.cursor", "reason": "invalid cursor"}],
        ) from None
