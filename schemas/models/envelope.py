"""The CloudEvents-style envelope every event travels in (mirror of `avro/envelope.avsc`)."""

import uuid
from datetime import UTC, datetime
from typing import Generic, Self, TypeVar

from pydantic import Field, model_validator

from schemas.models.base import EventPayload, Record, UtcDateTime

P = TypeVar("P", bound=EventPayload)


class Envelope(Record, Generic[P]):
    """One event: envelope attributes plus its typed payload in `data`.

    Parametrise (`Envelope[AgentRunRequested]`) to validate `data` from a dict.
    """

    id: uuid.UUID
    type: str = Field(min_length=1)
    source: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    tenant_id: str = Field(min_length=1)
    time: UtcDateTime
    correlation_id: str | None = None
    causation_id: str | None = None
    data: P

    @model_validator(mode="after")
    def _type_names_payload(self) -> Self:
        # A mismatch would route and archive the payload under the wrong schema.
        declared = getattr(type(self.data), "event_type", None)
        if self.type != declared:
            raise ValueError(f"type {self.type!r} does not match the payload's {declared!r}")
        return self

    @classmethod
    def new(
        cls,
        data: P,
        *,
        source: str,
        subject: str,
        tenant_id: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> "Envelope[P]":
        """A fresh event for `data`: new random id, type from the payload, time now."""
        return cls(
            id=uuid.uuid4(),
            type=data.event_type,
            source=source,
            subject=subject,
            tenant_id=tenant_id,
            time=datetime.now(UTC),
            correlation_id=correlation_id,
            causation_id=causation_id,
            data=data,
        )
