"""Does a pydantic model mirror an Avro record? Checked field by field, recursively.

The `.avsc` is the source of truth and the model is what code validates with; if
they drift, validated data fails to encode or decoded data fails to validate. The
catalog runs this check on every event type it accepts, custom ones included.
"""

import enum
import types
import typing
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

PRIMITIVES: dict[str, type] = {
    "string": str,
    "bytes": bytes,
    "boolean": bool,
    "int": int,
    "long": int,
    "float": float,
    "double": float,
}
LOGICAL_TYPES: dict[str, type] = {"timestamp-micros": datetime, "uuid": uuid.UUID}


def mismatches(schema: dict[str, Any], model: type[BaseModel]) -> list[str]:
    """Every difference between a record schema and a model; empty when they agree.

    `schema` must be parsed by fastavro (named types fully qualified and listed
    under `__named_schemas`).
    """
    return _Walk(schema.get("__named_schemas", {})).record(schema, model, model.__name__)


class _Walk:
    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.records_on_path: set[str] = set()

    def record(self, schema: dict[str, Any], model: Any, where: str) -> list[str]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return [f"{where}: schema has record {schema['name']}, model has {model!r}"]
        if schema["name"] in self.records_on_path:
            return [f"{where}: recursive record {schema['name']} is not supported"]
        self.records_on_path.add(schema["name"])
        fields = {field["name"]: field for field in schema["fields"]}
        model_fields = model.model_fields
        problems = [
            f"{where}.{name}: in the schema, not in the model"
            for name in fields.keys() - model_fields.keys()
        ]
        problems += [
            f"{where}.{name}: in the model, not in the schema"
            for name in model_fields.keys() - fields.keys()
        ]
        for name in fields.keys() & model_fields.keys():
            problems += self.field(fields[name], model_fields[name], f"{where}.{name}")
        self.records_on_path.discard(schema["name"])
        return sorted(problems)

    def field(self, avro: dict[str, Any], info: FieldInfo, where: str) -> list[str]:
        problems = self.avro_type(avro["type"], info.annotation, where)
        if "default" not in avro:
            if not info.is_required():
                problems.append(f"{where}: required in the schema, has a default in the model")
        elif info.is_required():
            problems.append(f"{where}: has a default in the schema, required in the model")
        elif (default := info.get_default(call_default_factory=True)) != avro["default"]:
            problems.append(
                f"{where}: default {avro['default']!r} in the schema, {default!r} in the model"
            )
        return problems

    def avro_type(self, avro: Any, annotation: Any, where: str) -> list[str]:
        annotation = _strip_annotated(annotation)
        optional, annotation = _split_optional(annotation)
        if isinstance(avro, list):
            if len(avro) != 2 or avro[0] != "null":
                return [f'{where}: only ["null", T] unions are supported, got {avro!r}']
            if not optional:
                return [f"{where}: optional in the schema, not in the model"]
            return self.avro_type(avro[1], annotation, where)
        if optional:
            return [f"{where}: optional in the model, not in the schema"]
        if isinstance(avro, str):
            if avro in self.named:
                return self.avro_type(self.named[avro], annotation, where)
            return _expect(PRIMITIVES.get(avro), annotation, avro, where)
        if "logicalType" in avro:
            return _expect(
                LOGICAL_TYPES.get(avro["logicalType"]), annotation, avro["logicalType"], where
            )
        kind = avro["type"]
        if kind == "record":
            return self.record(avro, annotation, where)
        if kind == "enum":
            return _enum(avro, annotation, where)
        if kind == "array":
            if typing.get_origin(annotation) is not list:
                return [f"{where}: array in the schema, {annotation!r} in the model"]
            return self.avro_type(avro["items"], typing.get_args(annotation)[0], f"{where}[]")
        if kind == "map":
            if (
                typing.get_origin(annotation) is not dict
                or typing.get_args(annotation)[0] is not str
            ):
                return [f"{where}: map in the schema, {annotation!r} in the model"]
            return self.avro_type(avro["values"], typing.get_args(annotation)[1], f"{where}{{}}")
        return self.avro_type(kind, annotation, where)


def _expect(expected: type | None, annotation: Any, avro_name: str, where: str) -> list[str]:
    if expected is None:
        return [f"{where}: Avro type {avro_name!r} is not supported"]
    # `is`, not issubclass: bool is an int, but a boolean field is no long.
    if annotation is not expected:
        return [f"{where}: {avro_name} in the schema, {annotation!r} in the model"]
    return []


def _enum(avro: dict[str, Any], annotation: Any, where: str) -> list[str]:
    if not (isinstance(annotation, type) and issubclass(annotation, enum.StrEnum)):
        return [f"{where}: enum {avro['name']} in the schema, {annotation!r} in the model"]
    values = [member.value for member in annotation]
    if values != avro["symbols"]:
        return [f"{where}: symbols {avro['symbols']} in the schema, {values} in the model"]
    return []


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _split_optional(annotation: Any) -> tuple[bool, Any]:
    """(True, T) for `T | None`, else (False, annotation)."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False, annotation
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if len(args) == 1:
        return True, _strip_annotated(args[0])
    return False, annotation
