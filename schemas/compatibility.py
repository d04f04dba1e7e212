"""Avro schema compatibility, decided by Apache avro's `ReaderWriterCompatibilityChecker`.

The levels are Confluent Schema Registry's: BACKWARD means the new schema can read
data written with an earlier one (consumers upgrade first), FORWARD means earlier
schemas can read data written with the new one (producers upgrade first), FULL
means both. Plain levels compare with the latest version only; `_TRANSITIVE` ones
with every earlier version, because a consumer may still meet events written
under any of them. The rules themselves are avro's; this module only picks which
pairs to check and turns avro's findings into sentences a person can act on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import avro.errors
import avro.schema
import fastavro
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.schema import SchemaParseException, UnknownType


class Compatibility(StrEnum):
    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"

    @property
    def transitive(self) -> bool:
        return self.endswith("_TRANSITIVE")

    @property
    def backward(self) -> bool:
        """The new schema must read what earlier schemas wrote."""
        return self.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        """Earlier schemas must read what the new schema writes."""
        return self.startswith(("FORWARD", "FULL"))


class InvalidSchema(ValueError):
    """The text is not an Avro schema; the message says why."""


#: What the two parsers raise on bad input (malformed JSON is a ValueError).
_PARSE_ERRORS = (
    avro.errors.AvroException,
    SchemaParseException,
    UnknownType,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    RecursionError,
)


def parse(text: str) -> avro.schema.Schema:
    """Parse a schema, accepting it only if fastavro accepts it too.

    avro's checker needs avro's schema objects, but fastavro is what encodes and
    decodes (ours and confluent_kafka's serde), and only fastavro checks that
    field defaults match their types: a bad default would pass every
    compatibility check and then break the first reader that needs it.
    """
    try:
        schema = avro.schema.parse(text)
        fastavro.parse_schema(json.loads(text))
    except _PARSE_ERRORS as exc:
        raise InvalidSchema(f"Invalid Avro schema: {exc}") from exc
    return schema


@dataclass(frozen=True)
class CompatibilityResult:
    """Empty `messages` means compatible; otherwise one sentence per broken pair."""

    messages: tuple[str, ...] = ()

    @property
    def compatible(self) -> bool:
        return not self.messages


def check(
    candidate: avro.schema.Schema,
    previous: Mapping[int, avro.schema.Schema],
    level: Compatibility,
) -> CompatibilityResult:
    """Can `candidate` follow the earlier versions (`previous`, by version number)?"""
    if level is Compatibility.NONE or not previous:
        return CompatibilityResult()
    versions = sorted(previous) if level.transitive else [max(previous)]
    messages: list[str] = []
    for version in versions:
        earlier = previous[version]
        if level.backward:
            pair = f"the new schema cannot read data written with version {version}"
            messages.extend(_problem(candidate, earlier, pair))
        if level.forward:
            pair = f"version {version} cannot read data written with the new schema"
            messages.extend(_problem(earlier, candidate, pair))
    return CompatibilityResult(tuple(messages))


def _problem(reader: avro.schema.Schema, writer: avro.schema.Schema, pair: str) -> list[str]:
    """avro's findings for one reader/writer pair as one sentence, or nothing.

    avro reports the kinds of problem, where they are (paths into the reader's
    schema) and details as separate sets, so with several problems they cannot
    be paired up; the sentence lists each set in full instead.
    """
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(reader, writer)
    if result.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    kinds = ", ".join(sorted({kind.name.upper() for kind in result.incompatibilities}))
    reader_json = reader.to_json()
    where = ", ".join(_describe(location, reader_json) for location in sorted(result.locations))
    details = "; ".join(sorted(result.messages))
    return [f"{pair}: {kinds} at {where}: {details}"]


def _describe(location: str, schema: Any) -> str:
    """Name the field a location like `/fields/2/type` points at, e.g. "field 'region'"."""
    names: list[str] = []
    node = schema
    in_fields = False
    for token in filter(None, location.split("/")):
        if isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
            if in_fields and isinstance(node, dict):
                names.append(str(node.get("name")))
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            break
        in_fields = token == "fields"
    return f"field '{'.'.join(names)}' ({location})" if names else location
