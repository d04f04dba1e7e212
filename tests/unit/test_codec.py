"""The generated Avro codec agrees with fastavro byte for byte and value for value."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.codec import AvroCodec, compile_codec
from tests.unit.test_schemas import CATALOG, SAMPLES, TYPE_NAMES, event_of

EVERYTHING = {
    "type": "record",
    "name": "Everything",
    "namespace": "test",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "precise", "type": "double"},
        {"name": "text", "type": "string"},
        {"name": "blob", "type": "bytes"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "BLUE"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "maybe", "type": ["null", "long"]},
        {"name": "last", "type": ["string", "null"]},
        {"name": "again", "type": "test.Color"},
    ],
}


def parsed(schema: dict[str, Any]) -> dict[str, Any]:
    result = parse_schema(schema)
    assert isinstance(result, dict)
    return result


def fastavro_bytes(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def fastavro_read(schema: dict[str, Any], data: bytes) -> Any:
    return schemaless_reader(io.BytesIO(data), schema, None)


def codec_for(schema: dict[str, Any]) -> AvroCodec:
    codec = compile_codec(parsed(schema))
    assert codec is not None
    return codec


@pytest.mark.parametrize("name", TYPE_NAMES)
@pytest.mark.parametrize("variant", ["full", "minimal"])
def test_every_event_type_matches_fastavro(name: str, variant: str) -> None:
    event_type = CATALOG.get(name)
    payload = SAMPLES[name]
    if variant == "minimal":
        required = [f["name"] for f in event_type.payload_schema["fields"] if "default" not in f]
        payload = event_type.model.model_validate({f: getattr(payload, f) for f in required})
    event = event_of(payload)
    codec = event_type.codec
    assert codec is not None, f"{name} should compile"

    expected = fastavro_bytes(event_type.parsed_schema, event_type.to_record(event))
    assert codec.encode(event) == expected
    assert codec.decode(expected, 0) == (
        fastavro_read(event_type.parsed_schema, expected),
        len(expected),
    )
    plain, end = codec.decode_plain(b"\x00head" + expected, 5)
    assert end == len(expected) + 5
    assert event_type.from_record(plain) == event


@pytest.mark.parametrize(
    ("small", "big", "text", "tags", "maybe", "last"),
    [
        (0, 0, "", [], None, None),
        (-1, -(2**63), "é" * 40, ["x"] * 70, 2**62, "end"),
        (2**31 - 1, 2**63 - 1, "t" * 300, ["a", "bb"], -64, None),
        (63, 64, "x" * 63, ["y" * 64], 0, "z"),
    ],
)
def test_edge_values_match_fastavro(
    small: int, big: int, text: str, tags: list[str], maybe: int | None, last: str | None
) -> None:
    record = {
        "flag": True,
        "small": small,
        "big": big,
        "ratio": 1.5,
        "precise": -2.25e300,
        "text": text,
        "blob": bytes(range(256)) * 3,
        "digest": b"\x00\x01\x02\x03",
        "color": "BLUE",
        "tags": tags,
        "maybe": maybe,
        "last": last,
        "again": "RED",
    }
    schema = parsed(EVERYTHING)
    codec = codec_for(EVERYTHING)
    expected = fastavro_bytes(schema, record)
    assert codec.encode(SimpleNamespace(**record)) == expected
    assert codec.decode(expected, 0) == (fastavro_read(schema, expected), len(expected))


def test_arrays_written_in_several_blocks_are_read() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}}],
    }
    codec = codec_for(schema)
    # two blocks, the second with a negative count followed by its byte size
    data = bytes([4, 2, 4, 1, 2, 6, 0])
    assert codec.decode(data, 0) == ({"xs": [1, 2, 3]}, len(data))
    assert fastavro_read(parsed(schema), data) == {"xs": [1, 2, 3]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x04ok\x02\x02\x10abc", "runs past the end"),  # last string: 8 bytes, 3 given
        (b"\x10abc", "index out of range"),  # first string: 8 bytes, 3 given
        (b"\x01", "negative length"),  # length -1
        (b"", "index out of range"),
        (b"\x04ok\x05", "enum index -3 does not exist"),
        (b"\x04ok\x02\x04", "union branch 2 does not exist"),
    ],
)
def test_corrupt_input_raises(data: bytes, message: str) -> None:
    codec = codec_for(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "s", "type": "string"},
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
                {"name": "u", "type": ["null", "string"]},
            ],
        }
    )
    with pytest.raises((ValueError, IndexError), match=message):
        codec.decode(data, 0)


@pytest.mark.parametrize(
    "field_type",
    [
        ["null", "string", "long"],
        {"type": "map", "values": "long"},
        {"type": "int", "logicalType": "date"},
    ],
)
def test_unsupported_schemas_fall_back_to_fastavro(field_type: Any) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]}
    assert compile_codec(parsed(schema)) is None
