"""Serde: envelope + typical payload, encode+decode, vs json.dumps/loads of the same dicts.

Prints figures; asserts only that both sides agree on the data. ``make bench``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from schemas.catalog import default_catalog
from schemas.micros import to_micros
from schemas.models import AgentRunRequested, Envelope
from schemas.serde import EventDeserializer, EventSerializer

N = 50_000


class CachedRegistry:
    """Registry answers are cached by serde after the first call; this holds them."""

    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}

    async def register(self, subject: str, schema: dict[str, Any]) -> int:
        self.schemas[len(self.schemas) + 1] = schema
        return len(self.schemas)

    async def get_schema(self, schema_id: int) -> dict[str, Any]:
        return self.schemas[schema_id]


def sample() -> Envelope[Any]:
    return Envelope.new(
        AgentRunRequested(
            run_id="run-8f2c1a9e",
            project_id="proj-website",
            agent_name="developer",
            task="Implement the login page with OAuth2 and write unit tests for it",
            risk_level="medium",
            cost_estimate_micros=250_000,
            requested_by="user-42",
        ),
        source="gateway",
        subject="run-8f2c1a9e",
        tenant_id="tenant-acme",
        correlation_id="c0ffee00-0000-4000-8000-000000000001",
    )


def rate(seconds: float) -> str:
    return f"{N / seconds:>10,.0f}/s"


def test_serde_vs_json() -> None:
    catalog = default_catalog()
    registry = CachedRegistry()
    serializer = EventSerializer(catalog, registry)
    deserializer = EventDeserializer(catalog, registry)
    event = sample()
    event_type = catalog.get(event.type)
    schema_id = asyncio.run(serializer.schema_id(event_type))
    value = serializer.encode_value(event_type, schema_id, event)
    assert asyncio.run(deserializer.deserialize(value)) == event
    reader = asyncio.run(deserializer._reader(schema_id))

    as_dict = event_type.to_record(event)  # the same dict json gets: ids str, time micros
    began = time.perf_counter()
    for _ in range(N):
        text = json.dumps(as_dict)
    json_enc = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(N):
        json.loads(text)
    json_dec = time.perf_counter() - began

    began = time.perf_counter()
    for _ in range(N):
        serializer.encode_value(event_type, schema_id, event)
    avro_enc = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(N):
        deserializer._decode(reader, value)
    avro_dec = time.perf_counter() - began

    json_bytes = len(text.encode())
    print(f"\nserde, {N} events of {event.type} (envelope + payload):")
    print(f"  json.dumps          {rate(json_enc)}   json.loads        {rate(json_dec)}")
    print(f"  avro encode (model) {rate(avro_enc)}   decode (to model) {rate(avro_dec)}")
    ratio = (json_enc + json_dec) / (avro_enc + avro_dec)
    print(f"  encode+decode speed vs json: {ratio:.2f}x")
    print(
        f"  bytes: avro {len(value)} (incl. 5-byte header) vs json {json_bytes}"
        f" = {len(value) / json_bytes:.2f}x"
    )
    assert to_micros(event.time) == as_dict["time"]
