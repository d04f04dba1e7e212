"""Payloads of `webhook.*`: subscriptions and every delivery attempt, so both are auditable."""

import uuid
from typing import ClassVar

from pydantic import Field, NonNegativeInt

from schemas.models.base import EventPayload, UtcDateTime


class WebhookSubscribed(EventPayload):
    event_type: ClassVar[str] = "webhook.subscribed"

    webhook_id: str
    url: str
    event_types: list[str]
    secret: str
    ordered: bool = False
    enabled: bool = True
    description: str | None = None


class WebhookUpdated(EventPayload):
    """A partial update: None means "unchanged"."""

    event_type: ClassVar[str] = "webhook.updated"

    webhook_id: str
    url: str | None = None
    event_types: list[str] | None = None
    secret: str | None = None
    ordered: bool | None = None
    enabled: bool | None = None
    reason: str | None = None


class WebhookDeleted(EventPayload):
    event_type: ClassVar[str] = "webhook.deleted"

    webhook_id: str


class WebhookDeliverySucceeded(EventPayload):
    event_type: ClassVar[str] = "webhook.delivery_succeeded"

    delivery_id: str
    webhook_id: str
    source_event_id: uuid.UUID
    source_event_type: str
    attempt: int = Field(ge=1)
    status_code: int
    latency_ms: NonNegativeInt
    response_body: str | None = None


class WebhookDeliveryFailed(EventPayload):
    event_type: ClassVar[str] = "webhook.delivery_failed"

    delivery_id: str
    webhook_id: str
    source_event_id: uuid.UUID
    source_event_type: str
    attempt: int = Field(ge=1)
    status_code: int | None = None
    latency_ms: NonNegativeInt
    error: str | None = None
    response_body: str | None = None
    next_attempt_at: UtcDateTime | None = None


class WebhookDeliveryDeadLettered(EventPayload):
    event_type: ClassVar[str] = "webhook.delivery_dead_lettered"

    delivery_id: str
    webhook_id: str
    source_event_id: uuid.UUID
    source_event_type: str
    attempts: int = Field(ge=1)
    last_status_code: int | None = None
    last_error: str | None = None
