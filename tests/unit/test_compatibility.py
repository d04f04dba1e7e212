"""Compatibility levels on top of avro's checker: which pairs are checked, and what is said."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import avro.schema
import pytest

from schemas.compatibility import Compatibility, InvalidSchema, check, parse

ID = {"name": "id", "type": "string"}
AMOUNT = {"name": "amount", "type": "long"}


def record(*fields: dict[str, Any]) -> avro.schema.Schema:
    return parse(json.dumps({"type": "record", "name": "Order", "fields": list(fields)}))


OLD = record(ID, AMOUNT)
# change: (new schema, new reads old = backward ok, old reads new = forward ok)
CHANGES = {
    "add required field": (record(ID, AMOUNT, {"name": "region", "type": "string"}), False, True),
    "add optional field": (
        record(ID, AMOUNT, {"name": "region", "type": ["null", "string"], "default": None}),
        True,
        True,
    ),
    "remove required field": (record(ID), True, False),
    "change field type": (record(ID, {"name": "amount", "type": "string"}), False, False),
}
EXPECTED: dict[Compatibility, Callable[[bool, bool], bool]] = {
    Compatibility.NONE: lambda backward, forward: True,
    Compatibility.BACKWARD: lambda backward, forward: backward,
    Compatibility.BACKWARD_TRANSITIVE: lambda backward, forward: backward,
    Compatibility.FORWARD: lambda backward, forward: forward,
    Compatibility.FORWARD_TRANSITIVE: lambda backward, forward: forward,
    Compatibility.FULL: lambda backward, forward: backward and forward,
    Compatibility.FULL_TRANSITIVE: lambda backward, forward: backward and forward,
}


@pytest.mark.parametrize("level", list(Compatibility))
@pytest.mark.parametrize("change", list(CHANGES))
def test_each_level_checks_its_directions(level: Compatibility, change: str) -> None:
    new, backward, forward = CHANGES[change]

    result = check(new, {1: OLD}, level)

    assert result.compatible is EXPECTED[level](backward, forward)
    assert bool(result.messages) is not result.compatible


def test_nothing_to_compare_with_is_compatible() -> None:
    assert check(OLD, {}, Compatibility.FULL_TRANSITIVE).compatible


def test_transitive_levels_check_every_earlier_version_the_others_only_the_latest() -> None:
    v1 = record(ID, {"name": "note", "type": "string"})
    v2 = record(ID)
    v3 = record(ID, {"name": "note", "type": "long", "default": 0})  # reads v2 data, not v1

    assert check(v3, {1: v1, 2: v2}, Compatibility.BACKWARD).compatible
    [message] = check(v3, {2: v2, 1: v1}, Compatibility.BACKWARD_TRANSITIVE).messages
    assert message.startswith("the new schema cannot read data written with version 1:")


def test_messages_name_the_field_the_problem_and_the_direction() -> None:
    [backward] = check(CHANGES["add required field"][0], {3: OLD}, Compatibility.FULL).messages
    assert backward == (
        "the new schema cannot read data written with version 3: "
        "READER_FIELD_MISSING_DEFAULT_VALUE at field 'region' (/fields/2): region"
    )
    [forward] = check(record(ID), {3: OLD}, Compatibility.FORWARD).messages
    assert forward.startswith("version 3 cannot read data written with the new schema: ")
    assert "field 'amount' (/fields/1)" in forward


def test_messages_give_the_path_of_nested_fields() -> None:
    def customer(zip_type: str) -> avro.schema.Schema:
        address = {
            "type": "record",
            "name": "Address",
            "fields": [{"name": "zip", "type": zip_type}],
        }
        return record(ID, {"name": "customer", "type": address})

    [message] = check(customer("int"), {1: customer("string")}, Compatibility.BACKWARD).messages

    assert "TYPE_MISMATCH at field 'customer.zip' (/fields/1/type/fields/0/type)" in message
    assert "reader type: int not compatible with writer type: string" in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "Error parsing JSON"),
        ('{"type": "record", "name": "Order"}', "non-empty fields"),
        ('{"type": "nope"}', "nope"),
        (
            json.dumps(
                {
                    "type": "record",
                    "name": "O",
                    "fields": [{"name": "n", "type": "int", "default": "x"}],
                }
            ),
            "Default value <x> must match schema type: int",
        ),
    ],
    ids=["malformed JSON", "record without fields", "unknown type", "default of the wrong type"],
)
def test_parse_refuses_what_is_not_a_usable_avro_schema(text: str, says: str) -> None:
    with pytest.raises(InvalidSchema, match="Invalid Avro schema") as refused:
        parse(text)
    assert says in str(refused.value)
