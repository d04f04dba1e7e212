"""The generated Avro codec agrees with fastavro byte for byte and value for value."""

from __future__ import annotations

import io
import uuid
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


WIDE_ENUM = [f"S{i}" for i in range(70)]  # indexes from 64 take two bytes
SIZES = {
    "type": "record",
    "name": "Sizes",
    "fields": [
        {"name": "n", "type": "long"},
        {"name": "text", "type": "string"},
        {"name": "blob", "type": "bytes"},
        {"name": "pick", "type": {"type": "enum", "name": "Wide", "symbols": WIDE_ENUM}},
    ],
}


@pytest.mark.parametrize(
    ("n", "text", "blob", "pick"),
    [
        (-65, "a" * 63, b"\x00" * 63, "S63"),  # last one-byte sizes and indexes
        (-64, "a" * 64, b"\xff" * 64, "S64"),  # first two-byte ones
        (8191, "é" * 31, b"", "S69"),  # 62 bytes of UTF-8: the slow path, still one byte
        (8192, "é" * 32, b"x" * 8192, "S0"),
        (2**21 - 1, "a" * 8191 + "é", b"x" * 8191, "S1"),
        (2**21, "a" * 8192, b"", "S2"),
        (2**49 + 12345, "日本語", b"", "S3"),  # a timestamp's width
        (-(2**40), "\U0001f600", b"", "S4"),
    ],
)
def test_varint_boundaries_match_fastavro(n: int, text: str, blob: bytes, pick: str) -> None:
    record = {"n": n, "text": text, "blob": blob, "pick": pick}
    codec = codec_for(SIZES)
    expected = fastavro_bytes(parsed(SIZES), record)
    assert codec.encode(SimpleNamespace(**record)) == expected
    assert codec.decode(expected, 0) == (record, len(expected))


def test_longs_sharing_high_bits_are_written_exactly() -> None:
    """Beyond 21 bits a long's high part comes from a cache: it must never be stale."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}
    codec = codec_for(schema)
    base = 1_763_870_000_000_000  # microseconds in 2025
    values = [base + step for step in (0, 1, 2**20, 2**21 - 1, 2**21, 2**35, -(2**22))]
    values += [-value for value in values]
    for value in values * 2:  # twice: the second round reads the cache
        expected = fastavro_bytes(parsed(schema), {"n": value})
        assert codec.encode(SimpleNamespace(n=value)) == expected
        assert codec.decode(expected, 0) == ({"n": value}, len(expected))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x01", "enum index 64 does not exist"),  # two-byte index, past the 2 symbols
        (b"\x81\x01", "enum index -65 does not exist"),
        (b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
    ],
)
def test_far_enum_indexes_and_endless_varints_are_refused(data: bytes, message: str) -> None:
    codec = codec_for(
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}],
        }
    )
    with pytest.raises(ValueError, match=message):
        codec.decode(data, 0)


def test_an_endless_long_is_refused() -> None:
    codec = codec_for({"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]})
    assert codec.decode(b"\xff" * 9 + b"\x01", 0)[1] == 10, "ten bytes is the most a long takes"
    with pytest.raises(ValueError, match="varint longer than 10 bytes"):
        codec.decode(b"\xff" * 10 + b"\x01", 0)


def test_uuids_are_written_as_their_text_whether_object_or_string() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "id", "type": {"type": "string", "logicalType": "uuid"}}],
    }
    codec = codec_for(schema)
    for value in (uuid.UUID(int=0), uuid.uuid4(), uuid.UUID(int=2**128 - 1)):
        expected = fastavro_bytes(parsed(schema), {"id": value})
        assert codec.encode(SimpleNamespace(id=value)) == expected
        assert codec.encode(SimpleNamespace(id=str(value))) == expected
        assert codec.decode(expected, 0) == ({"id": value}, len(expected))
