"""The event catalogue: every event type with its model, schemas and topic, parsed once.

Each payload `.avsc` under `avro/` is a record with two ledgerbus attributes:
`"ledgerbus.event_type"` (required) and `"ledgerbus.topic"` (a logical topic from
`schemas.topics`, default `custom`). The full schema of an event is composed here:
the envelope's fields, then a `data` field whose type is the payload record.

Custom event types need no change to ledgerbus code: put `.avsc` files in a folder
passed to `EventCatalog.load(extra_dirs=...)`, or call `register` at run time. The
model is the `EventPayload` subclass whose `event_type` matches (defining the class
registers it), or the one named by a `"ledgerbus.model"` attribute
(`"package.module.Class"` or `"package.module:Class"`), which is imported.
"""

import difflib
import functools
import importlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from fastavro import schemaless_writer
from fastavro.schema import SchemaParseException, parse_schema

from schemas.codec import AvroCodec, compile_codec
from schemas.conformance import mismatches
from schemas.models import Envelope, EventPayload, model_for
from schemas.records import WriteRecord, record_writer
from schemas.topics import DEFAULT_TOPIC, TOPICS, Topic

AVRO_DIR = Path(__file__).parent / "avro"
ENVELOPE_FILE = AVRO_DIR / "envelope.avsc"

EVENT_TYPE_ATTR = "ledgerbus.event_type"
TOPIC_ATTR = "ledgerbus.topic"
MODEL_ATTR = "ledgerbus.model"

_EVENT_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class SchemaError(ValueError):
    """A schema or model cannot become an event type; the message says which and why."""


class UnknownEventType(LookupError):
    """No such event type; `close_matches` holds the likely intended ones."""

    def __init__(self, event_type: str, known: Iterable[str]) -> None:
        self.event_type = event_type
        self.close_matches = difflib.get_close_matches(event_type, list(known), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(self.close_matches)}?" if self.close_matches else ""
        super().__init__(f"unknown event type {event_type!r}{hint}")


@dataclass(frozen=True)
class EventType:
    """Everything ledgerbus knows about one event type."""

    name: str
    model: type[EventPayload]
    payload_schema: dict[str, Any]
    """The payload `.avsc` as written."""
    schema: dict[str, Any]
    """The full event schema (envelope fields + `data`): what the registry stores."""
    parsed_schema: dict[str, Any]
    """`schema` parsed by fastavro, ready for its readers and writers."""
    topic: Topic
    envelope_model: type[Envelope[Any]]
    """`Envelope[model]`, which validates `data` as this payload."""
    _write: WriteRecord = field(repr=False, compare=False)
    codec: AvroCodec | None = field(repr=False, compare=False)
    """Generated encoder/decoders for `parsed_schema` (None: fastavro does it all)."""

    def to_record(self, event: Envelope[Any]) -> dict[str, Any]:
        """The dict fastavro writes with `parsed_schema`."""
        self._check(event)
        return self._write(event)

    def encode(self, event: Envelope[Any]) -> bytes:
        """The event's Avro binary body (no framing) under `parsed_schema`."""
        self._check(event)
        if self.codec is not None:
            return self.codec.encode(event)
        buffer = io.BytesIO()
        schemaless_writer(buffer, self.parsed_schema, self._write(event))
        return buffer.getvalue()

    def _check(self, event: Envelope[Any]) -> None:
        if type(event.data) is not self.model:
            raise TypeError(f"{self.name} carries {self.model.__name__}, not {type(event.data)}")

    def from_record(self, record: Mapping[str, Any]) -> Envelope[Any]:
        """The validated event for a dict of its fields: read by fastavro, made by
        `to_record`, or given by a caller (`data` may be a model or a dict)."""
        # `model_validate` minus its Python wrapper, which costs a tenth of the validation
        validator = self.envelope_model.__pydantic_validator__
        return cast("Envelope[Any]", validator.validate_python(record))


class EventCatalog:
    """Event types by name; lookups fail with close matches rather than a bare KeyError."""

    def __init__(self, envelope_schema: dict[str, Any]) -> None:
        self.envelope_schema = envelope_schema
        self._types: dict[str, EventType] = {}

    @classmethod
    def load(cls, extra_dirs: Iterable[str | Path] = ()) -> "EventCatalog":
        """The built-in event types plus every `.avsc` found under `extra_dirs`."""
        catalog = cls(_read(ENVELOPE_FILE))
        for directory in (AVRO_DIR, *map(Path, extra_dirs)):
            if not directory.is_dir():
                raise SchemaError(f"schema folder {directory} does not exist")
            for path in sorted(directory.rglob("*.avsc")):
                if path == ENVELOPE_FILE:
                    continue
                try:
                    payload_schema = _read(path)
                    catalog.register(payload_schema, _find_model(payload_schema))
                except SchemaError as error:
                    raise SchemaError(f"{path}: {error}") from error
        return catalog

    def register(
        self,
        payload_schema: dict[str, Any],
        model: type[EventPayload],
        *,
        topic: str | None = None,
    ) -> EventType:
        """Add an event type at run time; `topic` overrides the schema's `ledgerbus.topic`.

        Registering the same schema and model again is a no-op, so start-up code
        may run twice.
        """
        name = _event_type_name(payload_schema)
        if getattr(model, "event_type", None) != name:
            raise SchemaError(f"{model.__name__}.event_type must be {name!r}")
        topic_name = topic or payload_schema.get(TOPIC_ATTR, DEFAULT_TOPIC)
        if topic_name not in TOPICS:
            raise SchemaError(f"unknown topic {topic_name!r}; known topics: {', '.join(TOPICS)}")
        known = self._types.get(name)
        if known is not None:
            if known.model is model and known.payload_schema == payload_schema:
                return known
            raise SchemaError(f"event type {name!r} is already registered")
        event_type = self._build(name, payload_schema, model, TOPICS[topic_name])
        self._types[name] = event_type
        return event_type

    def get(self, name: str) -> EventType:
        """The event type called `name`, or `UnknownEventType` listing close matches."""
        try:
            return self._types[name]
        except KeyError:
            raise UnknownEventType(name, self._types) from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[EventType]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def _build(
        self, name: str, payload_schema: dict[str, Any], model: type[EventPayload], topic: Topic
    ) -> EventType:
        schema = compose(self.envelope_schema, payload_schema)
        try:
            parsed = cast(dict[str, Any], parse_schema(schema))
        except (SchemaParseException, ValueError, TypeError, KeyError) as error:
            raise SchemaError(f"{name}: invalid Avro schema: {error}") from error
        envelope_model = cast(type[Envelope[Any]], Envelope[model])  # type: ignore[valid-type]
        problems = mismatches(parsed, envelope_model)
        if problems:
            raise SchemaError(
                f"{model.__name__} does not match the schema of {name}:\n  " + "\n  ".join(problems)
            )
        return EventType(
            name=name,
            model=model,
            payload_schema=payload_schema,
            schema=schema,
            parsed_schema=parsed,
            topic=topic,
            envelope_model=envelope_model,
            _write=record_writer(parsed),
            codec=compile_codec(parsed),
        )


def compose(envelope_schema: dict[str, Any], payload_schema: dict[str, Any]) -> dict[str, Any]:
    """The full schema of one event type: envelope fields, then `data` = the payload."""
    payload_name = _full_name(payload_schema)
    return {
        "type": "record",
        "name": payload_name + "Event",
        "doc": f"{payload_schema.get('doc', payload_name)} (envelope + payload)",
        EVENT_TYPE_ATTR: payload_schema[EVENT_TYPE_ATTR],
        "fields": [
            *envelope_schema["fields"],
            {"name": "data", "type": payload_schema, "doc": "The event's payload."},
        ],
    }


@functools.cache
def default_catalog() -> EventCatalog:
    """The built-in catalogue, loaded and parsed once per process."""
    return EventCatalog.load()


def _read(path: Path) -> dict[str, Any]:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SchemaError(f"cannot read {path}: {error}") from error
    if not isinstance(schema, dict):
        raise SchemaError(f"{path} holds no JSON object")
    return schema


def _event_type_name(payload_schema: dict[str, Any]) -> str:
    if payload_schema.get("type") != "record":
        raise SchemaError("a payload schema must be an Avro record")
    name = payload_schema.get(EVENT_TYPE_ATTR)
    if not isinstance(name, str) or not _EVENT_TYPE_NAME.fullmatch(name):
        raise SchemaError(
            f"{EVENT_TYPE_ATTR!r} must be a dotted lower-case name like 'agent.completed', "
            f"got {name!r}"
        )
    return name


def _find_model(payload_schema: dict[str, Any]) -> type[EventPayload]:
    name = _event_type_name(payload_schema)
    path = payload_schema.get(MODEL_ATTR)
    model = _import(path) if path is not None else model_for(name)
    if model is None:
        raise SchemaError(
            f"no model for {name!r}: define an EventPayload subclass with "
            f"event_type = {name!r} before loading, or name it in {MODEL_ATTR!r}"
        )
    return model


def _import(path: Any) -> type[EventPayload]:
    if not isinstance(path, str):
        raise SchemaError(f"{MODEL_ATTR!r} must be a dotted path, got {path!r}")
    module_name, _, attribute = path.rpartition(":" if ":" in path else ".")
    try:
        model = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise SchemaError(f"cannot import {MODEL_ATTR} {path!r}: {error}") from error
    if not (isinstance(model, type) and issubclass(model, EventPayload)):
        raise SchemaError(f"{path!r} is not an EventPayload subclass")
    return model


def _full_name(schema: dict[str, Any]) -> str:
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"
