"""ledgerbus's registry client against the gateway's registry, over real HTTP under `/registry`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.registry_client import RegistryClient, RegistryClientError, RegistryNotFound
from tests.conftest import Isolation
from tests.support.registry_server import serve_registry

ORDER: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "test.ledgerbus",
    "fields": [{"name": "id", "type": "string"}],
}


def with_field(field: dict[str, Any]) -> dict[str, Any]:
    return {**ORDER, "fields": [*ORDER["fields"], field]}


@pytest.fixture
async def client(isolation: Isolation) -> AsyncIterator[RegistryClient]:
    async with serve_registry(isolation.database_url) as server, RegistryClient(server.url) as c:
        yield c


async def test_registers_gets_and_lists(client: RegistryClient) -> None:
    schema_id = await client.register("orders-value", ORDER)

    assert await client.register("orders-value", ORDER) == schema_id
    assert await client.register("test.ledgerbus.Order: refunds", ORDER) == schema_id
    assert await client.get_schema(schema_id) == ORDER
    assert await client.subjects() == ["orders-value", "test.ledgerbus.Order: refunds"]


async def test_checks_compatibility_against_the_latest_version(client: RegistryClient) -> None:
    breaking = with_field({"name": "region", "type": "string"})
    optional = with_field({"name": "region", "type": ["null", "string"], "default": None})

    assert (await client.check_compatibility("orders-value", breaking)).compatible
    assert await client.versions("orders-value") == []
    await client.register("orders-value", ORDER)
    assert await client.versions("orders-value") == [1]
    assert not (await client.check_compatibility("orders-value", breaking, version=1)).compatible
    result = await client.check_compatibility("orders-value", breaking)
    assert not result.compatible
    [message] = result.messages
    assert "field 'region'" in message
    assert (await client.check_compatibility("orders-value", optional)).compatible


async def test_refusals_raise_with_confluent_codes(client: RegistryClient) -> None:
    await client.register("orders-value", ORDER)

    with pytest.raises(RegistryNotFound) as unknown:
        await client.get_schema(999)
    assert isinstance(unknown.value, LookupError)
    assert (unknown.value.status_code, unknown.value.error_code) == (404, 40403)

    with pytest.raises(RegistryClientError) as incompatible:
        await client.register("orders-value", with_field({"name": "n", "type": "int"}))
    assert incompatible.value.error_code == 409
    assert "field 'n'" in incompatible.value.message

    invalid = with_field({"name": "n", "type": "int", "default": "seven"})
    with pytest.raises(RegistryClientError) as refused:
        await client.check_compatibility("orders-value", invalid)
    assert refused.value.error_code == 42201
