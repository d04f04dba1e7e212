"""Avro binary encoding and decoding compiled to straight-line Python, once per schema.

fastavro's Cython ``write_data``/``read_data`` interpret the schema on every
call (a dict lookup and a dispatch per field), which costs ~6-7 µs for a
typical ledgerbus event, twice what ``json`` needs for the same dict. Most
of that is interpretation, not encoding. So, like ``dataclasses`` does for
``__init__``, this module walks the schema once and generates one Python
function per direction: per field a few bytearray appends or one slice, with
the one-byte varint case inlined.

The contract is fastavro's, byte for byte and value for value: ``encode``
produces exactly what ``schemaless_writer`` does for the same record, and
``decode`` returns exactly what ``schemaless_reader`` returns (logical types
converted: ``uuid`` -> ``UUID``, ``timestamp-micros`` -> aware UTC
``datetime``). ``tests/unit/test_codec.py`` checks both against fastavro for
every event type. Schemas using a feature not compiled here (general unions,
other logical types) get ``None`` from :func:`compile_codec`, and callers keep
using fastavro for them; so does reading with schema resolution.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.micros import to_micros

Encode = Callable[[Any], bytes]
Decode = Callable[[bytes, int], tuple[dict[str, Any], int]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class Unsupported(Exception):
    """The schema uses something this compiler does not generate code for."""


class Truncated(ValueError):
    """The bytes end (or claim a length) before the record does."""


@dataclass(frozen=True, slots=True)
class AvroCodec:
    """The generated functions for one schema.

    - ``encode(model)``: Avro bytes of a pydantic model mirroring the schema
      (attributes read directly; UUIDs, datetimes and StrEnums accepted);
    - ``decode(b, p)``: the record starting at ``b[p]`` and the position after it,
      valued exactly as fastavro returns it;
    - ``decode_plain(b, p)``: the same with ``uuid`` left as ``str`` and
      ``timestamp-micros`` as ``int``, which models validate faster than the
      objects (they accept both).
    """

    encode: Encode
    decode: Decode
    decode_plain: Decode
    source: str  # the generated code, for debugging and curious readers


def compile_codec(parsed_schema: dict[str, Any]) -> AvroCodec | None:
    """A codec for a schema from fastavro's ``parse_schema``, or None if unsupported."""
    named = parsed_schema.get("__named_schemas", {})
    try:
        parts = [
            _Writer(named).function("encode", parsed_schema),
            _Reader(named, logical=True).function("decode", parsed_schema),
            _Reader(named, logical=False).function("decode_plain", parsed_schema),
        ]
    except Unsupported:
        return None
    namespace: dict[str, Any] = dict(_RUNTIME)
    for _, constants in parts:
        namespace.update(constants)
    source = "\n".join(code for code, _ in parts)
    exec(compile(source, f"<avro codec {parsed_schema.get('name')}>", "exec"), namespace)
    return AvroCodec(namespace["encode"], namespace["decode"], namespace["decode_plain"], source)


# ---------------------------------------------------------------- runtime helpers


def _long(n: int) -> bytes:
    """Zigzag varint of any long (the generated code inlines the one-byte case)."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_long(b: bytes, p: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        byte = b[p]
        p += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), p
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _micros(value: Any) -> int:
    return value if value.__class__ is int else to_micros(value)


_RUNTIME: dict[str, Any] = {
    "_long": _long,
    "_read_long": _read_long,
    "_micros": _micros,
    "_EPOCH": _EPOCH,
    "_timedelta": timedelta,
    "_UUID": uuid.UUID,
    "_float": struct.Struct("<f"),
    "_double": struct.Struct("<d"),
    "Truncated": Truncated,
}


# ---------------------------------------------------------------- code generation


class _Emitter:
    """Source lines, unique local names and the constants the code refers to."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._names = 0

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line + "\n")

    def fresh(self, stem: str) -> str:
        self._names += 1
        return f"{stem}{self._names}"


class _Writer(_Emitter):
    """Emits ``encode(r)``: the Avro bytes of model ``r``, appended to ``out``."""

    def function(self, name: str, schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.value(schema, "r", 1)
        body = "".join(self.lines)
        code = (
            f"def {name}(r):\n    out = bytearray()\n    put = out.append\n"
            f"{body}    return bytes(out)\n"
        )
        return code, self.constants

    def length(self, depth: int, sized: str) -> None:
        n = self.fresh("n")
        self.emit(depth, f"{n} = len({sized})")
        self.emit(depth, f"if {n} < 64:")
        self.emit(depth + 1, f"put({n} << 1)")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"out += _long({n})")

    def value(self, schema: Any, expr: str, depth: int) -> None:
        schema = self.named.get(schema, schema) if isinstance(schema, str) else schema
        if isinstance(schema, list):
            self.union(schema, expr, depth)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = None if isinstance(schema, str) else schema.get("logicalType")
        if logical == "uuid":
            expr = f"str({expr})"
        elif logical == "timestamp-micros":
            expr = f"_micros({expr})"
        elif logical is not None:
            raise Unsupported(logical)
        if kind == "record":
            self.record(schema, expr, depth)
        elif kind == "null":
            pass
        elif kind == "boolean":
            self.emit(depth, f"put(1 if {expr} else 0)")
        elif kind in ("int", "long"):
            v = self.fresh("v")
            self.emit(depth, f"{v} = {expr}")
            self.emit(depth, f"if 0 <= {v} < 64:")
            self.emit(depth + 1, f"put({v} << 1)")
            self.emit(depth, "else:")
            self.emit(depth + 1, f"out += _long({v})")
        elif kind in ("float", "double"):
            self.emit(depth, f"out += _{kind}.pack({expr})")
        elif kind in ("string", "bytes"):
            v = self.fresh("s")
            encoded = f"{expr}.encode()" if kind == "string" else expr
            self.emit(depth, f"{v} = {encoded}")
            self.length(depth, v)
            self.emit(depth, f"out += {v}")
        elif kind == "enum":
            index = self.fresh("_enum")
            self.constants[index] = {s: i << 1 for i, s in enumerate(schema["symbols"])}
            self.emit(depth, f"put({index}[{expr}])")
        elif kind == "fixed":
            self.emit(depth, f"out += {expr}")
        elif kind == "array":
            self.array(schema, expr, depth)
        else:
            raise Unsupported(kind)

    def record(self, schema: dict[str, Any], expr: str, depth: int) -> None:
        r = expr
        if not expr.isidentifier():
            r = self.fresh("r")
            self.emit(depth, f"{r} = {expr}")
        for field in schema["fields"]:
            self.value(field["type"], f"{r}.{field['name']}", depth)

    def union(self, branches: list[Any], expr: str, depth: int) -> None:
        if len(branches) != 2 or "null" not in branches:
            raise Unsupported("only [null, T] unions are compiled")
        null_index = branches.index("null")
        other = branches[1 - null_index]
        v = self.fresh("u")
        self.emit(depth, f"{v} = {expr}")
        self.emit(depth, f"if {v} is None:")
        self.emit(depth + 1, f"put({null_index << 1})")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"put({(1 - null_index) << 1})")
        self.value(other, v, depth + 1)

    def array(self, schema: dict[str, Any], expr: str, depth: int) -> None:
        """One block holding every item, then the empty block that ends the array."""
        items, item = self.fresh("items"), self.fresh("item")
        self.emit(depth, f"{items} = {expr}")
        self.emit(depth, f"if {items}:")
        self.length(depth + 1, items)
        self.emit(depth + 1, f"for {item} in {items}:")
        self.value(schema["items"], item, depth + 2)
        self.emit(depth, "put(0)")


class _Reader(_Emitter):
    """Emits ``decode(b, p)``; ``value`` returns the variable holding what it read.

    Lengths are not checked against the end one by one: a slice past the end
    is merely short, and positions only grow, so one check at the end catches
    every truncation.
    """

    def __init__(self, named: dict[str, Any], *, logical: bool) -> None:
        super().__init__(named)
        self.logical = logical

    def function(self, name: str, schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        result = self.value(schema, 1)
        body = "".join(self.lines)
        return (
            f"def {name}(b, p):\n{body}"
            f"    if p > len(b):\n        raise Truncated('the record runs past the end')\n"
            f"    return {result}, p\n"
        ), self.constants

    def long(self, depth: int, target: str) -> None:
        """Read a zigzag varint into ``target``; the one-byte case inline."""
        self.emit(depth, f"{target} = b[p]")
        self.emit(depth, f"if {target} < 128:")
        self.emit(depth + 1, f"{target} = ({target} >> 1) ^ -({target} & 1)")
        self.emit(depth + 1, "p += 1")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{target}, p = _read_long(b, p)")

    def sized(self, depth: int, target: str, suffix: str) -> None:
        """Read a length-prefixed byte string into ``target`` (``slice`` + ``suffix``)."""
        n = self.fresh("n")
        self.emit(depth, f"{n} = b[p]")
        self.emit(depth, f"if {n} < 128 and not {n} & 1:")  # one byte, non-negative
        self.emit(depth + 1, f"{n} >>= 1")
        self.emit(depth + 1, "p += 1")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{n}, p = _read_long(b, p)")
        self.emit(depth + 1, f"if {n} < 0:")
        self.emit(depth + 2, "raise ValueError('negative length')")
        self.emit(depth, f"{target} = b[p:p + {n}]{suffix}")
        self.emit(depth, f"p += {n}")

    def value(self, schema: Any, depth: int) -> str:
        schema = self.named.get(schema, schema) if isinstance(schema, str) else schema
        if isinstance(schema, list):
            return self.union(schema, depth)
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = None if isinstance(schema, str) else schema.get("logicalType")
        v = self.fresh("v")
        if kind == "record":
            fields = [f"{f['name']!r}: {self.value(f['type'], depth)}" for f in schema["fields"]]
            self.emit(depth, f"{v} = {{{', '.join(fields)}}}")
        elif kind == "null":
            self.emit(depth, f"{v} = None")
        elif kind == "boolean":
            self.emit(depth, f"{v} = b[p] == 1")
            self.emit(depth, "p += 1")
        elif kind in ("int", "long"):
            self.long(depth, v)
        elif kind in ("float", "double"):
            size = 4 if kind == "float" else 8
            self.emit(depth, f"({v},) = _{kind}.unpack_from(b, p)")
            self.emit(depth, f"p += {size}")
        elif kind == "string":
            self.sized(depth, v, ".decode()")
        elif kind == "bytes":
            self.sized(depth, v, "")
        elif kind == "enum":
            symbols = self.fresh("_symbols")
            self.constants[symbols] = tuple(schema["symbols"])
            self.long(depth, v)
            self.emit(depth, f"if not 0 <= {v} < {len(schema['symbols'])}:")
            self.emit(depth + 1, f"raise ValueError(f'enum index {{{v}}} does not exist')")
            self.emit(depth, f"{v} = {symbols}[{v}]")
        elif kind == "fixed":
            size = schema["size"]
            self.emit(depth, f"{v} = b[p:p + {size}]")
            self.emit(depth, f"p += {size}")
        elif kind == "array":
            self.array(schema, v, depth)
        else:
            raise Unsupported(kind)
        if logical not in (None, "uuid", "timestamp-micros"):
            raise Unsupported(logical)
        if self.logical and logical == "uuid":
            self.emit(depth, f"{v} = _UUID({v})")
        elif self.logical and logical == "timestamp-micros":
            self.emit(depth, f"{v} = _EPOCH + _timedelta(microseconds={v})")
        return v

    def union(self, branches: list[Any], depth: int) -> str:
        if len(branches) != 2 or "null" not in branches:
            raise Unsupported("only [null, T] unions are compiled")
        null_index = branches.index("null")
        v, branch = self.fresh("v"), self.fresh("i")
        self.long(depth, branch)
        self.emit(depth, f"if {branch} == {null_index}:")
        self.emit(depth + 1, f"{v} = None")
        self.emit(depth, f"elif {branch} == {1 - null_index}:")
        inner = self.value(branches[1 - null_index], depth + 1)
        self.emit(depth + 1, f"{v} = {inner}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"raise ValueError(f'union branch {{{branch}}} does not exist')")
        return v

    def array(self, schema: dict[str, Any], v: str, depth: int) -> None:
        """Blocks until an empty one; a negative count is followed by the block's byte size."""
        count = self.fresh("count")
        self.emit(depth, f"{v} = []")
        self.emit(depth, "while True:")
        self.long(depth + 1, count)
        self.emit(depth + 1, f"if {count} == 0:")
        self.emit(depth + 2, "break")
        self.emit(depth + 1, f"if {count} < 0:")
        size = self.fresh("size")
        self.long(depth + 2, size)
        self.emit(depth + 2, f"{count} = -{count}")
        self.emit(depth + 1, f"for _ in range({count}):")
        item = self.value(schema["items"], depth + 2)
        self.emit(depth + 2, f"{v}.append({item})")
