"""Base classes and field types shared by every model that mirrors an `.avsc` record."""

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from schemas.micros import from_micros


def _micros_to_datetime(value: Any) -> Any:
    # Integers are Avro timestamp-micros, never Unix seconds as pydantic would assume.
    if isinstance(value, int) and not isinstance(value, bool):
        return from_micros(value)
    return value


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:  # the common case; utcoffset() on pydantic's TzInfo is slow
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value.astimezone(UTC)


UtcDateTime = Annotated[
    datetime, BeforeValidator(_micros_to_datetime), AfterValidator(_require_utc)
]
"""An aware datetime normalised to UTC; an int is read as microseconds since the epoch."""


class Record(BaseModel):
    """Mirror of an Avro record: immutable, and unknown fields are errors, not silently lost.

    Bytes travel as base64 in JSON so signatures and ciphertexts survive the HTTP API.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


_MODELS: dict[str, type["EventPayload"]] = {}


class EventPayload(Record):
    """The `data` of one event type; defining a subclass with `event_type` registers it."""

    event_type: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            return
        known = _MODELS.setdefault(cls.event_type, cls)
        if known is not cls:
            raise TypeError(
                f"{cls.__qualname__}: event type {cls.event_type!r} already has a model, "
                f"{known.__module__}.{known.__qualname__}"
            )


def model_for(event_type: str) -> type[EventPayload] | None:
    """The payload model registered for an event type by subclassing, if any."""
    return _MODELS.get(event_type)
