"""Models -> the plain dicts fastavro writes, compiled once per schema.

The schema walk happens once; per event the work is a copy of the model's
`__dict__` plus the few conversions Avro needs: UUID -> str, datetime -> int
micros, nested model -> dict. That costs about what `model_dump()` does, but hands
fastavro values it writes without its own logical-type conversions, and never goes
through JSON. StrEnum members are already `str`, so enums pass through untouched.

The way back needs no code here: models accept what fastavro returns (UUID,
aware datetime, str symbols) and these plain dicts alike (see `UtcDateTime`).
"""

from collections.abc import Callable
from typing import Any

from schemas.micros import to_micros

Convert = Callable[[Any], Any]
WriteRecord = Callable[[Any], dict[str, Any]]


def record_writer(parsed_schema: dict[str, Any]) -> WriteRecord:
    """A function turning a model that mirrors the record schema into its Avro dict.

    `parsed_schema` comes from fastavro's `parse_schema`, so named types are fully
    qualified and listed under `__named_schemas`; the model is assumed to conform
    (see `schemas.conformance`).
    """
    return _record(parsed_schema, parsed_schema.get("__named_schemas", {}))


def _record(schema: dict[str, Any], named: dict[str, Any]) -> WriteRecord:
    converted: list[tuple[str, Convert]] = []
    for field in schema["fields"]:
        convert = _converter(field["type"], named)
        if convert is not None:
            converted.append((field["name"], convert))

    def write(model: Any) -> dict[str, Any]:
        # A pydantic model's __dict__ holds exactly its fields; copying it is one C call.
        record: dict[str, Any] = model.__dict__.copy()
        for name, convert in converted:
            record[name] = convert(record[name])
        return record

    return write


def _converter(avro: Any, named: dict[str, Any]) -> Convert | None:
    """How to turn a model value into what fastavro wants; None when it is already that."""
    if isinstance(avro, list):  # ["null", T], the only union models mirror
        inner = _converter(avro[-1], named)
        if inner is None:
            return None
        return lambda value: None if value is None else inner(value)
    if isinstance(avro, str):
        return _converter(named[avro], named) if avro in named else None
    logical = avro.get("logicalType")
    if logical == "timestamp-micros":
        return to_micros
    if logical == "uuid":
        return str
    kind = avro["type"]
    if kind == "record":
        return _record(avro, named)
    if kind in ("array", "map"):
        item = _converter(avro["items" if kind == "array" else "values"], named)
        if item is None:
            return None
        if kind == "array":
            return lambda values: [item(value) for value in values]
        return lambda values: {key: item(value) for key, value in values.items()}
    return _converter(kind, named)  # primitives and enums (a StrEnum is a str) end as None
