"""Avro binary encoding and decoding compiled to straight-line Python, once per schema.

fastavro's Cython ``write_data``/``read_data`` interpret the schema on every
call (a dict lookup and a dispatch per field), which costs ~6-7 µs for a
typical ledgerbus event, twice what ``json`` needs for the same dict. Most
of that is interpretation, not encoding. So, like ``dataclasses`` does for
``__init__``, this module walks the schema once and generates one Python
function per direction.

Encoding builds *text*, one character per output byte, and turns it into
bytes with a single ``encode("latin-1")`` at the end: an ASCII string field is
then its one-character length prefix plus the string itself, with no
per-field ``str.encode`` or buffer append (``str.isascii`` is O(1); other
strings take a slower exact path). Decoding reads one-byte varints, lengths,
union branches and enum indexes through 256-entry tables and inlines longer
varints, so a typical field costs a table lookup and a slice.

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

import functools
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Encode = Callable[[Any], bytes]
Decode = Callable[[bytes, int], tuple[dict[str, Any], int]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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

_CHAR = tuple(chr(i) for i in range(256))  # byte value -> its latin-1 character
_SMALL_LONG = tuple(_CHAR[(n << 1) ^ (n >> 63)] for n in range(-64, 64))  # index n + 64
_SMALL_SIZE = tuple(_CHAR[n << 1] for n in range(64))
_MORE = tuple(_CHAR[bits | 0x80] for bits in range(128))  # 7 bits, more bytes follow


def _long(n: int) -> str:
    """Zigzag varint of any long, as latin-1 text (generated code inlines -64..8191).

    Beyond three bytes the rest comes from a cache: timestamps and large
    amounts share their high bits with the previous values.
    """
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _CHAR[n]
    if n < 0x4000:
        return _MORE[n & 0x7F] + _CHAR[n >> 7]
    if n < 0x200000:
        return _MORE[n & 0x7F] + _MORE[(n >> 7) & 0x7F] + _CHAR[n >> 14]
    return _MORE[n & 0x7F] + _MORE[(n >> 7) & 0x7F] + _MORE[(n >> 14) & 0x7F] + _high(n >> 21)


@functools.lru_cache(maxsize=1024)
def _high(n: int) -> str:
    """Unsigned varint of ``n`` (the bits above a long's first 21)."""
    out = ""
    while n > 0x7F:
        out += _MORE[n & 0x7F]
        n >>= 7
    return out + _CHAR[n]


def _string(text: str) -> str:
    """Length-prefixed UTF-8 of any string, as latin-1 text (the slow path)."""
    if text.isascii():
        return _long(len(text)) + text
    encoded = text.encode()
    return _long(len(encoded)) + encoded.decode("latin-1")


def _bytes(data: bytes) -> str:
    return _long(len(data)) + data.decode("latin-1")


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


def _read_size(b: bytes, p: int) -> tuple[int, int]:
    """A length that did not fit the one-byte table: long, or negative (corrupt)."""
    n, p = _read_long(b, p)
    if n < 0:
        raise ValueError("negative length")
    return n, p


def _bad_branch(b: bytes, p: int) -> ValueError:
    return ValueError(f"union branch {_read_long(b, p)[0]} does not exist")


def _read_symbol(b: bytes, p: int, symbols: tuple[str, ...]) -> tuple[str, int]:
    """An enum index that did not fit the one-byte table: far, or out of range."""
    index, p = _read_long(b, p)
    if not 0 <= index < len(symbols):
        raise ValueError(f"enum index {index} does not exist")
    return symbols[index], p


# first byte -> the size it encodes on its own, or -1 (longer varint, or negative)
_SIZE = tuple(byte >> 1 if byte < 0x80 and not byte & 1 else -1 for byte in range(256))

_RUNTIME: dict[str, Any] = {
    "_long": _long,
    "_string": _string,
    "_bytes": _bytes,
    "_read_size": _read_size,
    "_read_symbol": _read_symbol,
    "_bad_branch": _bad_branch,
    "_SMALL_LONG": _SMALL_LONG,
    "_MORE": _MORE,
    "_CHAR": _CHAR,
    "_SMALL_SIZE": _SMALL_SIZE,
    "_SIZE": _SIZE,
    "_EPOCH": _EPOCH,
    "_MICROSECOND": timedelta(microseconds=1),
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

    def constant(self, stem: str, value: Any) -> str:
        name = self.fresh(stem)
        self.constants[name] = value
        return name

    def resolve(self, schema: Any) -> tuple[Any, str, str | None]:
        """(schema, type name, logical type) with named references followed."""
        schema = self.named.get(schema, schema) if isinstance(schema, str) else schema
        if isinstance(schema, list):
            return schema, "union", None
        if isinstance(schema, str):
            return schema, schema, None
        logical = schema.get("logicalType")
        if logical not in (None, "uuid", "timestamp-micros"):
            raise Unsupported(logical)
        return schema, schema["type"], logical


def _nullable(branches: list[Any]) -> tuple[int, Any]:
    """(index of null, the other branch) of a ``[null, T]`` union; others are unsupported."""
    if len(branches) != 2 or "null" not in branches:
        raise Unsupported("only [null, T] unions are compiled")
    null_index = branches.index("null")
    return null_index, branches[1 - null_index]


def _text(pieces: list[str]) -> str:
    """An expression joining text pieces (variable names) in order."""
    if not pieces:
        return "''"
    if len(pieces) == 1:
        return pieces[0]
    return "f'" + "".join(f"{{{piece}}}" for piece in pieces) + "'"


class _Writer(_Emitter):
    """Emits ``encode(r)``: the Avro bytes of model ``r``.

    ``value`` emits code computing the latin-1 text of one value and returns
    the names holding it, in order.
    """

    def function(self, name: str, schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        pieces = self.value(schema, "r", 1)
        body = "".join(self.lines)
        code = f"def {name}(r):\n{body}    return {_text(pieces)}.encode('latin-1')\n"
        return code, self.constants

    def value(self, schema: Any, expr: str, depth: int) -> list[str]:
        schema, kind, logical = self.resolve(schema)
        if kind == "union":
            return [self.union(schema, expr, depth)]
        if kind == "record":
            return self.record(schema, expr, depth)
        if kind == "null":
            return []
        if kind == "array":
            return [self.array(schema, expr, depth)]
        v = self.fresh("x")
        emit = self.emit
        if kind == "boolean":
            emit(depth, f"{v} = '\\x01' if {expr} else '\\x00'")
        elif kind in ("int", "long"):
            emit(depth, f"{v} = {expr}")
            if logical == "timestamp-micros":
                emit(depth, f"if {v}.__class__ is not int:")
                emit(depth + 1, f"{v} = ({v} - _EPOCH) // _MICROSECOND")
            emit(depth, f"if -64 <= {v} < 64:")
            emit(depth + 1, f"{v} = _SMALL_LONG[{v} + 64]")
            emit(depth, f"elif 0 <= {v} < 8192:")  # two bytes: counts, tokens, small money
            emit(depth + 1, f"{v} = _MORE[({v} << 1) & 127] + _CHAR[{v} >> 6]")
            emit(depth, "else:")
            emit(depth + 1, f"{v} = _long({v})")
        elif kind in ("float", "double"):
            emit(depth, f"{v} = _{kind}.pack({expr}).decode('latin-1')")
        elif kind == "string" and logical == "uuid":
            emit(depth, f"{v} = {expr}")
            emit(depth, f"if {v}.__class__ is _UUID:")  # UUID.__str__ inline, and its length
            emit(depth + 1, f"h = '%032x' % {v}.int")
            text = "{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            emit(depth + 1, f"{v} = f'{_SMALL_SIZE[36]}{text}'")
            emit(depth, "else:")
            emit(depth + 1, f"{v} = _string(str({v}))")
        elif kind == "string":
            size = self.fresh("z")
            emit(depth, f"{v} = {expr}")
            emit(depth, f"if {v}.isascii() and len({v}) < 64:")  # chars are bytes
            emit(depth + 1, f"{size} = _SMALL_SIZE[len({v})]")
            emit(depth, "else:")
            emit(depth + 1, f"{size} = ''")
            emit(depth + 1, f"{v} = _string({v})")
            return [size, v]
        elif kind == "bytes":
            emit(depth, f"{v} = {expr}")
            emit(depth, f"if len({v}) < 64:")
            emit(depth + 1, f"{v} = _SMALL_SIZE[len({v})] + {v}.decode('latin-1')")
            emit(depth, "else:")
            emit(depth + 1, f"{v} = _bytes({v})")
        elif kind == "enum":
            symbols = {s: _long(i) for i, s in enumerate(schema["symbols"])}
            emit(depth, f"{v} = {self.constant('_enum', symbols)}[{expr}]")
        elif kind == "fixed":
            emit(depth, f"{v} = {expr}.decode('latin-1')")
        else:
            raise Unsupported(kind)
        return [v]

    def record(self, schema: dict[str, Any], expr: str, depth: int) -> list[str]:
        r = expr
        if not expr.isidentifier():
            r = self.fresh("r")
            self.emit(depth, f"{r} = {expr}")
        pieces: list[str] = []
        for field in schema["fields"]:
            pieces += self.value(field["type"], f"{r}.{field['name']}", depth)
        return pieces

    def union(self, branches: list[Any], expr: str, depth: int) -> str:
        null_index, other = _nullable(branches)
        v = self.fresh("u")
        self.emit(depth, f"{v} = {expr}")
        self.emit(depth, f"if {v} is None:")
        self.emit(depth + 1, f"{v} = {_long(null_index)!r}")
        self.emit(depth, "else:")
        inner = self.value(other, v, depth + 1)
        self.emit(depth + 1, f"{v} = {_long(1 - null_index)!r} + {_text(inner)}")
        return v

    def array(self, schema: dict[str, Any], expr: str, depth: int) -> str:
        """One block holding every item, then the empty block that ends the array."""
        items, item, parts = self.fresh("items"), self.fresh("item"), self.fresh("parts")
        self.emit(depth, f"{items} = {expr}")
        self.emit(depth, f"if {items}:")
        self.emit(depth + 1, f"{parts} = []")
        self.emit(depth + 1, f"for {item} in {items}:")
        inner = self.value(schema["items"], item, depth + 2)
        self.emit(depth + 2, f"{parts}.append({_text(inner)})")
        self.emit(depth + 1, f"{items} = _long(len({items})) + ''.join({parts}) + '\\x00'")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{items} = '\\x00'")
        return items


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
        """Read a zigzag varint into ``target``, longer ones inline too."""
        emit = self.emit
        emit(depth, f"{target} = b[p]")
        emit(depth, "p += 1")
        emit(depth, f"if {target} > 127:")
        emit(depth + 1, f"{target} &= 127")
        emit(depth + 1, "shift = 7")
        emit(depth + 1, "while True:")
        emit(depth + 2, "byte = b[p]")
        emit(depth + 2, "p += 1")
        emit(depth + 2, f"{target} |= (byte & 127) << shift")
        emit(depth + 2, "if byte < 128:")
        emit(depth + 3, "break")
        emit(depth + 2, "shift += 7")
        emit(depth + 2, "if shift > 63:")
        emit(depth + 3, "raise ValueError('varint longer than 10 bytes')")
        emit(depth, f"{target} = ({target} >> 1) ^ -({target} & 1)")

    def sized(self, depth: int, target: str, suffix: str) -> None:
        """Read a length-prefixed byte string into ``target`` (``slice`` + ``suffix``)."""
        n = self.fresh("n")
        self.emit(depth, f"{n} = _SIZE[b[p]]")
        self.emit(depth, "p += 1")
        self.emit(depth, f"if {n} < 0:")
        self.emit(depth + 1, f"{n}, p = _read_size(b, p - 1)")
        self.emit(depth, f"{target} = b[p:(p := p + {n})]{suffix}")

    def value(self, schema: Any, depth: int) -> str:
        schema, kind, logical = self.resolve(schema)
        if kind == "union":
            return self.union(schema, depth)
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
            self.enum(schema, v, depth)
        elif kind == "fixed":
            size = schema["size"]
            self.emit(depth, f"{v} = b[p:p + {size}]")
            self.emit(depth, f"p += {size}")
        elif kind == "array":
            self.array(schema, v, depth)
        else:
            raise Unsupported(kind)
        if self.logical and logical == "uuid":
            self.emit(depth, f"{v} = _UUID({v})")
        elif self.logical and logical == "timestamp-micros":
            self.emit(depth, f"{v} = _EPOCH + _timedelta(0, 0, {v})")
        return v

    def enum(self, schema: dict[str, Any], v: str, depth: int) -> None:
        symbols = tuple(schema["symbols"])
        by_byte = tuple(  # first byte -> symbol when that byte alone is a valid index
            symbols[byte >> 1]
            if byte < 0x80 and not byte & 1 and byte >> 1 < len(symbols)
            else None
            for byte in range(256)
        )
        self.emit(depth, f"{v} = {self.constant('_symbol', by_byte)}[b[p]]")
        self.emit(depth, "p += 1")
        self.emit(depth, f"if {v} is None:")
        symbols_name = self.constant("_symbols", symbols)
        self.emit(depth + 1, f"{v}, p = _read_symbol(b, p - 1, {symbols_name})")

    def union(self, branches: list[Any], depth: int) -> str:
        null_index, other = _nullable(branches)
        v, branch = self.fresh("v"), self.fresh("i")
        self.emit(depth, f"{branch} = b[p]")
        self.emit(depth, "p += 1")
        self.emit(depth, f"if {branch} == {null_index << 1}:")
        self.emit(depth + 1, f"{v} = None")
        self.emit(depth, f"elif {branch} == {(1 - null_index) << 1}:")
        inner = self.value(other, depth + 1)
        self.emit(depth + 1, f"{v} = {inner}")
        self.emit(depth, "else:")
        self.emit(depth + 1, "raise _bad_branch(b, p - 1)")
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
