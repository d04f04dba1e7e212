"""Events <-> Kafka records: Confluent wire format plus CloudEvents binary-mode headers.

The value is ``0x00 | schema id (4 bytes, big endian) | Avro binary`` so any
Kafka tool with a schema registry can read it; the envelope attributes travel
again as ``ce_*`` headers (CloudEvents Kafka binding, binary mode) so routers
can filter without decoding. The key is the subject (order per subject).

Schema ids come from a registry (ledgerbus's own or any Confluent-compatible
one); both directions cache them, so after warm-up encoding and decoding never
leave the process.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from schemas.catalog import EventCatalog, EventType, UnknownEventType
from schemas.micros import EPOCH
from schemas.models import Envelope

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
CONTENT_TYPE = b"application/avro"
SPEC_VERSION = b"1.0"
TENANT_HEADER = "ledgerbus-tenant"

Headers = list[tuple[str, bytes]]

_MILLISECOND = timedelta(milliseconds=1)


class SchemaRegistry(Protocol):
    """The two registry calls serde needs (see ``schemas.registry_client``)."""

    async def register(self, subject: str, schema: dict[str, Any]) -> int: ...

    async def get_schema(self, schema_id: int) -> dict[str, Any]: ...


class DecodeError(ValueError):
    """Bytes that cannot become an event; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """What the producer sends: everything but the partition."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers


def subject_name(event_type: EventType) -> str:
    """Registry subject: the record's full name (Confluent's RecordNameStrategy),
    since several event types share a topic."""
    return str(event_type.parsed_schema["name"])


_SPEC_VERSION_HEADER = ("ce_specversion", SPEC_VERSION)  # the same for every event
_CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE)


def ce_headers(event: Envelope[Any], tenant_id: str) -> Headers:
    headers: Headers = [
        _SPEC_VERSION_HEADER,
        ("ce_id", str(event.id).encode()),
        ("ce_type", event.type.encode()),
        ("ce_source", event.source.encode()),
        ("ce_subject", event.subject.encode()),
        ("ce_time", event.time.isoformat().encode()),
        _CONTENT_TYPE_HEADER,
        (TENANT_HEADER, tenant_id.encode()),
    ]
    if event.correlation_id is not None:
        headers.append(("ce_correlationid", event.correlation_id.encode()))
    if event.causation_id is not None:
        headers.append(("ce_causationid", event.causation_id.encode()))
    return headers


class EventSerializer:
    """Envelope model -> Kafka record, registering each type's schema once."""

    def __init__(self, catalog: EventCatalog, registry: SchemaRegistry, topic_prefix: str = ""):
        self.catalog = catalog
        self.registry = registry
        self.topic_prefix = topic_prefix
        self._ids: dict[str, int] = {}

    async def prepare(self, event_types: Sequence[str]) -> None:
        """Register the schemas of ``event_types`` now rather than on first use."""
        for name in event_types:
            await self.schema_id(self.catalog.get(name))

    async def schema_id(self, event_type: EventType) -> int:
        schema_id = self._ids.get(event_type.name)
        if schema_id is None:
            schema_id = await self.registry.register(subject_name(event_type), event_type.schema)
            self._ids[event_type.name] = schema_id
        return schema_id

    def topic(self, event_type: EventType) -> str:
        """The physical topic events of ``event_type`` go to."""
        return f"{self.topic_prefix}ledgerbus.{event_type.topic.name}"

    def encode_value(self, event_type: EventType, schema_id: int, event: Envelope[Any]) -> bytes:
        return _framing(schema_id) + event_type.encode(event)

    def record(self, event_type: EventType, schema_id: int, event: Envelope[Any]) -> KafkaRecord:
        """``serialize`` once the schema id is known: no await, for batch producers."""
        return KafkaRecord(  # positional: keywords cost a third more, per event
            self.topic(event_type),
            event.subject.encode(),
            self.encode_value(event_type, schema_id, event),
            ce_headers(event, event.tenant_id),
        )

    async def serialize(self, event: Envelope[Any]) -> KafkaRecord:
        event_type = self.catalog.get(event.type)
        schema_id = self._ids.get(event_type.name) or await self.schema_id(event_type)
        return self.record(event_type, schema_id, event)


@dataclass(frozen=True, slots=True)
class RawEvent:
    """A decoded but unvalidated event: its Avro record plus the bytes it came from."""

    schema_id: int
    event_type: EventType
    record: dict[str, Any]
    value: bytes

    @property
    def body(self) -> bytes:
        """The Avro body without the Confluent header: the event's canonical bytes."""
        return self.value[_HEADER.size :]


Decode = Callable[[bytes, int], tuple[dict[str, Any], int]]


@dataclass(frozen=True, slots=True)
class Reader:
    """How to read values written with one schema id.

    ``decode`` returns fastavro's values (for ``read``); ``event`` turns a framed
    value into the validated model, decoding with uuids left as str and
    timestamps as int micros, which models validate faster than the objects.
    """

    event_type: EventType
    decode: Decode
    event: Callable[[bytes], Envelope[Any]]


def _validating(event_type: EventType, decode_plain: Decode) -> Callable[[bytes], Envelope[Any]]:
    """Decode then validate in one call: the consumer's hot path, so no layers."""
    validate = event_type.envelope_model.__pydantic_validator__.validate_python

    def event(value: bytes) -> Envelope[Any]:
        record = _body(decode_plain, value)
        try:
            return cast("Envelope[Any]", validate(record))
        except ValueError as exc:
            raise DecodeError("schema_violation", f"event fails validation: {exc}") from exc

    return event


class EventDeserializer:
    """Confluent-framed bytes -> validated envelope model.

    A value written with a newer (or older) schema than ours is resolved to our
    local schema by Avro's rules, so an old reader keeps reading new events.
    """

    def __init__(self, catalog: EventCatalog, registry: SchemaRegistry) -> None:
        self.catalog = catalog
        self.registry = registry
        self._readers: dict[int, Reader] = {}
        self._by_header: dict[bytes, Reader] = {}  # the same, by the 5 framing bytes

    async def deserialize(self, value: bytes | None) -> Envelope[Any]:
        event = self.deserialize_cached(value)
        if event is not None:
            return event
        schema_id = _schema_id(value)
        reader = self._readers.get(schema_id) or await self._reader(schema_id)
        assert value is not None  # _schema_id refuses None
        return reader.event(value)

    def deserialize_cached(self, value: bytes | None) -> Envelope[Any] | None:
        """``deserialize`` without awaiting: None when the value is not framed with a
        schema id seen before (then await ``deserialize``: it asks the registry, or
        raises ``DecodeError`` for bad framing)."""
        reader = self.cached_reader(value)
        return None if reader is None else reader.event(cast(bytes, value))

    def cached_reader(self, value: bytes | None) -> Reader | None:
        """The reader for a value framed with a schema id seen before, found from
        its first 5 bytes: tells the event type before anything is decoded."""
        return None if value is None else self._by_header.get(value[: _HEADER.size])

    async def read(self, value: bytes | None) -> RawEvent:
        """Decode the Avro body only (no model validation): for consumers that
        store or route bytes, like the archiver."""
        schema_id = _schema_id(value)
        reader = self._readers.get(schema_id) or await self._reader(schema_id)
        assert value is not None
        return RawEvent(schema_id, reader.event_type, _body(reader.decode, value), value)

    async def _reader(self, schema_id: int) -> Reader:
        try:
            schema = await self.registry.get_schema(schema_id)
        except LookupError as exc:
            raise DecodeError("unknown_schema_id", f"schema id {schema_id} is unknown") from exc
        event_type_name = schema.get("ledgerbus.event_type")
        try:
            event_type = self.catalog.get(str(event_type_name))
        except UnknownEventType as exc:
            raise DecodeError("unknown_event_type", str(exc)) from exc
        # Parsing Canonical Form ignores docs and layout: equal forms mean the
        # same bytes, so the fast path (no schema resolution) is safe. A
        # registry that normalises schema text would otherwise miss it.
        same = to_parsing_canonical_form(schema) == to_parsing_canonical_form(event_type.schema)
        codec = event_type.codec
        if same and codec is not None:
            reader = Reader(event_type, codec.decode, _validating(event_type, codec.decode_plain))
        else:
            resolve = _resolving_decoder(_parse(schema), event_type.parsed_schema)
            reader = Reader(event_type, resolve, _validating(event_type, resolve))
        self._readers[schema_id] = reader
        self._by_header[_framing(schema_id)] = reader
        return reader


def _resolving_decoder(writer: dict[str, Any], reader: dict[str, Any]) -> Decode:
    """fastavro with Avro schema resolution: data written with another version of the schema."""

    def decode(value: bytes, position: int) -> tuple[dict[str, Any], int]:
        stream = io.BytesIO(value)
        stream.seek(position)
        record = schemaless_reader(stream, writer, reader)
        if not isinstance(record, dict):
            raise ValueError("the Avro body is not a record")
        return record, stream.tell()

    return decode


def _body(decode: Decode, value: bytes) -> dict[str, Any]:
    """The record after the Confluent header, which must fill the value exactly."""
    try:
        record, end = decode(value, _HEADER.size)
    except Exception as exc:  # corrupt input raises many types (IndexError, ValueError...)
        raise DecodeError("undecodable_avro", f"Avro body cannot be read: {exc!r}") from exc
    if end != len(value):
        raise DecodeError("undecodable_avro", "bytes left over after the Avro record")
    return record


@functools.lru_cache(maxsize=1024)
def _framing(schema_id: int) -> bytes:
    """The 5 bytes before every Avro body written with ``schema_id``."""
    return _HEADER.pack(MAGIC_BYTE, schema_id)


def _schema_id(value: bytes | None) -> int:
    if value is None or len(value) < _HEADER.size:
        raise DecodeError("not_confluent_framed", "value is shorter than the 5-byte header")
    magic, schema_id = _HEADER.unpack_from(value)
    if magic != MAGIC_BYTE:
        raise DecodeError("not_confluent_framed", f"magic byte is {magic}, expected 0")
    return int(schema_id)


def _parse(schema: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], parse_schema(schema))


def kafka_timestamp_ms(event: Envelope[Any]) -> int:
    """The record timestamp Kafka gets: the event's time, in milliseconds."""
    return (event.time - EPOCH) // _MILLISECOND
