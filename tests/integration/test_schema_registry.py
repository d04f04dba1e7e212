"""The schema registry as Confluent's own client and serdes see it: real HTTP, real PostgreSQL.

confluent_kafka's client is synchronous, so its calls go through `asyncio.to_thread`
while this loop serves them. Raw HTTP (httpx) checks what the client hides: status
codes, content types, error bodies, and what happens under concurrency.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.conftest import Isolation
from tests.support.registry_server import RunningRegistry, serve_registry

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"

ID = {"name": "id", "type": "string"}
AMOUNT = {"name": "amount_micros", "type": "long"}
REGION = {"name": "region", "type": "string"}
OPTIONAL_REGION = {"name": "region", "type": ["null", "string"], "default": None}


def record(*fields: dict[str, Any]) -> str:
    return json.dumps(
        {"type": "record", "name": "Order", "namespace": "test.ledgerbus", "fields": list(fields)}
    )


V1 = record(ID, AMOUNT)

R = TypeVar("R")


async def call(func: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Run a blocking client call off the loop that serves it."""
    return await asyncio.to_thread(func, *args, **kwargs)


@pytest.fixture
async def server(isolation: Isolation) -> AsyncIterator[RunningRegistry]:
    async with serve_registry(isolation.database_url) as running:
        yield running


@pytest.fixture
def confluent(server: RunningRegistry) -> Iterator[SchemaRegistryClient]:
    client = SchemaRegistryClient({"url": server.url, "max.retries": 0})
    yield client
    client.close()


@pytest.fixture
async def http(server: RunningRegistry) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def register_raw(http: httpx.AsyncClient, subject: str, schema: str) -> httpx.Response:
    return await http.post(f"subjects/{subject}/versions", json={"schema": schema})


def forget(client: SchemaRegistryClient) -> None:
    """Drop the client's caches, so that its next answers come from the server."""
    client.clear_caches()  # type: ignore[no-untyped-call]


def parsed(schema: Schema) -> Any:
    assert schema.schema_str is not None
    return json.loads(schema.schema_str)


async def rejected(func: Callable[..., Any], *args: Any) -> SchemaRegistryError:
    with pytest.raises(SchemaRegistryError) as caught:
        await call(func, *args)
    return caught.value


async def test_confluent_client_registers_looks_up_gets_and_lists(
    confluent: SchemaRegistryClient,
) -> None:
    schema_id = await call(confluent.register_schema, "orders-value", Schema(V1, "AVRO"))

    forget(confluent)
    relaid = json.dumps(json.loads(V1), indent=4, sort_keys=True)
    assert (
        await call(confluent.register_schema, "orders-value", Schema(relaid, "AVRO")) == schema_id
    )
    found = await call(confluent.lookup_schema, "orders-value", Schema(V1, "AVRO"))
    assert (found.subject, found.version, found.schema_id) == ("orders-value", 1, schema_id)
    served = await call(confluent.get_schema, schema_id)
    assert parsed(served) == json.loads(V1)

    assert await call(confluent.register_schema, "refunds-value", Schema(V1, "AVRO")) == schema_id
    with_default = record(ID, {**AMOUNT, "default": 0})
    assert await call(confluent.register_schema, "other-value", Schema(with_default)) != schema_id

    assert await call(confluent.get_subjects) == ["orders-value", "other-value", "refunds-value"]
    assert await call(confluent.get_versions, "orders-value") == [1]
    pairs = await call(confluent.get_schema_versions, schema_id)
    assert [(pair.subject, pair.version) for pair in pairs] == [
        ("orders-value", 1),
        ("refunds-value", 1),
    ]
    latest = await call(confluent.get_latest_version, "orders-value")
    assert (latest.version, latest.schema_id) == (1, schema_id)
    assert parsed(latest.schema) == json.loads(V1)
    first = await call(confluent.get_version, "orders-value", 1)
    assert first.schema_id == schema_id


async def test_avro_serializer_and_deserializer_round_trip_through_the_registry(
    server: RunningRegistry, confluent: SchemaRegistryClient
) -> None:
    order = {"id": "order-1", "amount_micros": 1_500_000}
    context = SerializationContext("orders", MessageField.VALUE)

    payload = await call(AvroSerializer(confluent, V1), order, context)

    assert payload is not None and payload[0] == 0  # Confluent wire format: magic byte
    schema_id = int.from_bytes(payload[1:5], "big")
    registered = await call(confluent.get_latest_version, "orders-value")
    assert registered.schema_id == schema_id
    reader = SchemaRegistryClient({"url": server.url})  # empty cache: must fetch by id
    try:
        assert await call(AvroDeserializer(reader), payload, context) == order
    finally:
        reader.close()


async def test_a_breaking_change_is_rejected_with_409_and_says_why(
    confluent: SchemaRegistryClient, http: httpx.AsyncClient
) -> None:
    await call(confluent.register_schema, "orders-value", Schema(V1, "AVRO"))

    required = await rejected(
        confluent.register_schema, "orders-value", Schema(record(ID, AMOUNT, REGION))
    )
    assert (required.http_status_code, required.error_code) == (409, 409)
    assert (
        'incompatible with an earlier schema for subject "orders-value"' in required.error_message
    )
    assert "cannot read data written with version 1" in required.error_message
    assert "READER_FIELD_MISSING_DEFAULT_VALUE at field 'region'" in required.error_message

    retyped = record(ID, {"name": "amount_micros", "type": "string"})
    response = await register_raw(http, "orders-value", retyped)
    assert response.status_code == 409
    assert response.headers["content-type"] == MEDIA_TYPE
    body = response.json()
    assert body["error_code"] == 409
    assert "TYPE_MISMATCH at field 'amount_micros'" in body["message"]
    assert "reader type: string not compatible with writer type: long" in body["message"]

    optional = Schema(record(ID, AMOUNT, OPTIONAL_REGION))
    await call(confluent.register_schema, "orders-value", optional)
    assert await call(confluent.get_versions, "orders-value") == [1, 2]


async def test_transitive_levels_check_every_earlier_version_and_subject_config_overrides(
    confluent: SchemaRegistryClient,
) -> None:
    note_v1 = record(ID, {"name": "note", "type": "string"})
    without_note = record(ID)
    note_v3 = record(ID, {"name": "note", "type": "long", "default": 0})  # reads v2, not v1
    for subject in ("strict-value", "relaxed-value"):
        for schema in (note_v1, without_note):
            await call(confluent.register_schema, subject, Schema(schema))
    await call(confluent.set_compatibility, "relaxed-value", "BACKWARD")

    error = await rejected(confluent.register_schema, "strict-value", Schema(note_v3))
    assert error.http_status_code == 409
    assert "version 1" in error.error_message
    assert "version 2" not in error.error_message
    assert "field 'note'" in error.error_message

    await call(confluent.register_schema, "relaxed-value", Schema(note_v3))
    assert await call(confluent.get_versions, "relaxed-value") == [1, 2, 3]
    assert await call(confluent.get_versions, "strict-value") == [1, 2]

    # Against one named version, only that pair is compared (as in Confluent).
    assert await call(confluent.test_compatibility, "strict-value", Schema(note_v3), 2) is True
    assert await call(confluent.test_compatibility, "strict-value", Schema(note_v3), 1) is False


async def test_compatibility_endpoint_reports_messages_when_verbose(
    confluent: SchemaRegistryClient, http: httpx.AsyncClient
) -> None:
    await call(confluent.register_schema, "orders-value", Schema(V1))
    body = {"schema": record(ID, AMOUNT, REGION)}

    verbose = await http.post(
        "compatibility/subjects/orders-value/versions/latest", params={"verbose": "true"}, json=body
    )
    quiet = await http.post("compatibility/subjects/orders-value/versions/latest", json=body)
    new_subject = await http.post("compatibility/subjects/nothing-yet/versions/latest", json=body)
    missing_version = await http.post("compatibility/subjects/orders-value/versions/7", json=body)

    assert verbose.headers["content-type"] == MEDIA_TYPE
    assert verbose.json()["is_compatible"] is False
    [message] = verbose.json()["messages"]
    assert "field 'region'" in message
    assert quiet.json() == {"is_compatible": False}
    assert new_subject.json() == {"is_compatible": True}
    assert (missing_version.status_code, missing_version.json()["error_code"]) == (404, 40402)
    compatible = Schema(record(ID, AMOUNT, OPTIONAL_REGION))
    assert await call(confluent.test_compatibility, "orders-value", compatible) is True


async def test_global_and_subject_config(
    confluent: SchemaRegistryClient, http: httpx.AsyncClient
) -> None:
    assert await call(confluent.get_compatibility) == "BACKWARD_TRANSITIVE"
    raw = await http.get("config")
    assert raw.json() == {"compatibilityLevel": "BACKWARD_TRANSITIVE"}
    assert raw.headers["content-type"] == MEDIA_TYPE

    unset = await rejected(confluent.get_compatibility, "orders-value")
    assert (unset.http_status_code, unset.error_code) == (404, 40408)
    fallback = await http.get("config/orders-value", params={"defaultToGlobal": "true"})
    assert fallback.json() == {"compatibilityLevel": "BACKWARD_TRANSITIVE"}

    # Annotated `-> str`, but it returns the response body.
    subject_level: object = await call(confluent.set_compatibility, "orders-value", "full")
    global_level: object = await call(confluent.set_compatibility, None, "NONE")
    assert subject_level == {"compatibility": "FULL"}
    assert global_level == {"compatibility": "NONE"}
    assert await call(confluent.get_compatibility, "orders-value") == "FULL"
    assert await call(confluent.get_compatibility) == "NONE"

    # FULL on the subject wins over the global NONE: a field without default breaks it.
    await call(confluent.register_schema, "orders-value", Schema(V1))
    await rejected(confluent.register_schema, "orders-value", Schema(record(ID, AMOUNT, REGION)))
    # Subjects without their own level follow the global NONE.
    await call(confluent.register_schema, "loose-value", Schema(V1))
    await call(confluent.register_schema, "loose-value", Schema(record(ID, AMOUNT, REGION)))

    bad = await rejected(confluent.set_compatibility, "orders-value", "SOMETIMES")
    assert (bad.http_status_code, bad.error_code) == (422, 42203)
    removed = await call(confluent.delete_config, "orders-value")
    assert removed.compatibility_level == "FULL"
    gone = await rejected(confluent.get_compatibility, "orders-value")
    assert gone.error_code == 40408


async def test_errors_have_confluent_codes_and_bodies(
    confluent: SchemaRegistryClient, http: httpx.AsyncClient
) -> None:
    await call(confluent.register_schema, "orders-value", Schema(V1))

    async def error_of(response: httpx.Response) -> tuple[int, dict[str, Any]]:
        assert response.headers["content-type"] == MEDIA_TYPE
        return response.status_code, response.json()

    unknown = {"schema": record(ID)}
    assert await error_of(await http.post("subjects/nobody", json=unknown)) == (
        404,
        {"error_code": 40401, "message": "Subject 'nobody' not found."},
    )
    assert await error_of(await http.post("subjects/orders-value", json=unknown)) == (
        404,
        {"error_code": 40403, "message": "Schema not found"},
    )
    assert await error_of(await http.get("schemas/ids/999")) == (
        404,
        {"error_code": 40403, "message": "Schema 999 not found"},
    )
    assert await error_of(await http.get("subjects/orders-value/versions/9")) == (
        404,
        {"error_code": 40402, "message": "Version 9 not found."},
    )
    assert (await error_of(await http.get("subjects/nobody/versions")))[1]["error_code"] == 40401
    for version in ("abc", "0", "2147483648"):
        status, body = await error_of(await http.get(f"subjects/orders-value/versions/{version}"))
        assert (status, body["error_code"]) == (422, 42202)
        assert f"'{version}' is not a valid version id" in body["message"]

    missing = await rejected(confluent.get_schema, 999)
    assert (missing.http_status_code, missing.error_code) == (404, 40403)


async def test_concurrent_registrations_agree_on_one_id_and_version(
    server: RunningRegistry, http: httpx.AsyncClient
) -> None:
    same = await asyncio.gather(*(register_raw(http, "orders-value", V1) for _ in range(24)))
    assert {(r.status_code, r.json()["id"], r.json()["version"]) for r in same} == {
        (200, same[0].json()["id"], 1)
    }

    subjects = [f"copy{n}-value" for n in range(12)]
    shared = await asyncio.gather(
        *(register_raw(http, subject, record(ID)) for subject in subjects)
    )
    assert len({response.json()["id"] for response in shared}) == 1

    await http.put("config/many-value", json={"compatibility": "NONE"})
    distinct = [record({"name": f"field{n}", "type": "int"}) for n in range(12)]
    added = await asyncio.gather(*(register_raw(http, "many-value", schema) for schema in distinct))
    assert sorted(response.json()["version"] for response in added) == list(range(1, 13))
    assert len({response.json()["id"] for response in added}) == 12

    async with server.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM registry_schemas") == 1 + 1 + 12
        assert await conn.fetchval("SELECT count(*) FROM registry_versions") == 1 + 12 + 12


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("malformed JSON", {"content": b'{"schema": '}, 422, "Invalid JSON"),
    ("no schema", {"json": {"schemaType": "AVRO"}}, 422, "schema: Field required"),
    ("schema not a string", {"json": {"schema": {"type": "int"}}}, 422, "schema:"),
    ("not JSON inside", {"json": {"schema": "Order"}}, 42201, "Invalid Avro schema"),
    (
        "not Avro",
        {"json": {"schema": '{"type": "record", "name": "Order"}'}},
        42201,
        "Record schema requires a non-empty fields property",
    ),
    (
        "default of the wrong type",
        {"json": {"schema": record({"name": "n", "type": "int", "default": "x"})}},
        42201,
        "Default value <x> must match schema type: int",
    ),
    (
        "protobuf",
        {"json": {"schema": "syntax = 'proto3';", "schemaType": "PROTOBUF"}},
        42201,
        "Unsupported schemaType 'PROTOBUF'",
    ),
    (
        "references",
        {"json": {"schema": V1, "references": [{"name": "x", "subject": "y", "version": 1}]}},
        42201,
        "references are not supported",
    ),
    (
        "form content type",
        {"content": V1, "headers": {"content-type": "application/x-www-form-urlencoded"}},
        415,
        "Unsupported content type",
    ),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
@pytest.mark.parametrize(
    "path",
    [
        "subjects/orders-value/versions",
        "subjects/orders-value",
        "compatibility/subjects/orders-value/versions/latest",
    ],
)
async def test_bad_input_is_refused_clearly_and_stores_nothing(
    server: RunningRegistry,
    http: httpx.AsyncClient,
    path: str,
    case: tuple[str, dict[str, Any], int, str],
) -> None:
    _, request_kwargs, error_code, says = case
    response = await http.post(path, **request_kwargs)

    assert response.status_code == int(str(error_code)[:3])
    assert response.headers["content-type"] == MEDIA_TYPE
    body = response.json()
    assert body["error_code"] == error_code
    assert says in body["message"]
    async with server.pool.acquire() as conn:
        for table in ("registry_schemas", "registry_subjects", "registry_versions"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_rejected_registration_stores_nothing(
    server: RunningRegistry, http: httpx.AsyncClient
) -> None:
    await register_raw(http, "orders-value", V1)

    assert (await register_raw(http, "orders-value", record(ID, AMOUNT, REGION))).status_code == 409

    async with server.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM registry_schemas") == 1
        assert await conn.fetchval("SELECT count(*) FROM registry_versions") == 1


async def test_soft_delete_hides_versions_but_ids_keep_decoding(
    confluent: SchemaRegistryClient, http: httpx.AsyncClient
) -> None:
    v2 = Schema(record(ID, AMOUNT, OPTIONAL_REGION))
    await call(confluent.register_schema, "orders-value", Schema(V1))
    v2_id = await call(confluent.register_schema, "orders-value", v2)

    assert await call(confluent.delete_version, "orders-value", 2) == 2
    assert await call(confluent.get_versions, "orders-value") == [1]
    assert await call(confluent.get_versions, "orders-value", True) == [1, 2]
    assert parsed(await call(confluent.get_schema, v2_id))["fields"][2]["name"] == "region"
    forget(confluent)
    assert (await call(confluent.lookup_schema, "orders-value", v2, deleted=True)).version == 2
    forget(confluent)  # the client caches lookups without regard to `deleted`
    hidden = await rejected(confluent.lookup_schema, "orders-value", v2)
    assert hidden.error_code == 40403
    assert (await rejected(confluent.delete_version, "orders-value", 2)).error_code == 40406
    live = await rejected(confluent.delete_version, "orders-value", 1, True)
    assert live.error_code == 40407

    assert await call(confluent.delete_subject, "orders-value") == [1]
    assert await call(confluent.get_subjects) == []
    assert await call(confluent.get_subjects, None, True) == ["orders-value"]
    assert (await rejected(confluent.delete_subject, "orders-value")).error_code == 40404
    assert (await rejected(confluent.get_versions, "orders-value")).error_code == 40401

    # Soft-deleted versions no longer constrain new ones.
    breaking = record({"name": "id", "type": "int"})
    assert (await register_raw(http, "orders-value", breaking)).json()["version"] == 3

    await call(confluent.delete_subject, "orders-value")
    assert await call(confluent.delete_subject, "orders-value", True) == [1, 2, 3]
    assert await call(confluent.get_subjects, None, True) == []
    assert (await http.get(f"schemas/ids/{v2_id}")).status_code == 200
    again = await register_raw(http, "orders-value", V1)
    assert again.json()["version"] == 1


async def test_a_store_failure_is_a_50001(server: RunningRegistry, http: httpx.AsyncClient) -> None:
    await server.pool.close()  # PostgreSQL out of reach

    response = await http.get("subjects")

    assert response.status_code == 500
    assert response.json() == {"error_code": 50001, "message": "Error in the backend data store"}
