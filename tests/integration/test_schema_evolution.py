"""Custom event types, `ledgerbus schemas check`, and old readers reading new events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from producers.publisher import Publisher, build_event
from producers.topics import ensure_topics
from schemas.catalog import EventCatalog, default_catalog
from schemas.models import EventPayload
from schemas.registry_client import RegistryClient, RegistryClientError
from schemas.serde import EventDeserializer, EventSerializer
from tests.conftest import Isolation, StackUnderTest
from tests.support.cli import run_cli

MODEL_V1 = """
from schemas.models import EventPayload

class InvoicePaid(EventPayload):
    event_type = "{event_type}"
    invoice_id: str
    amount_micros: int
"""

AVSC_V1: dict[str, Any] = {
    "type": "record",
    "name": "InvoicePaid",
    "namespace": "acme.events",
    "doc": "A customer paid an invoice.",
    "ledgerbus.event_type": "",
    "ledgerbus.model": "acme_models.InvoicePaid",
    "fields": [
        {"name": "invoice_id", "type": "string", "doc": "Invoice number."},
        {"name": "amount_micros", "type": "long", "doc": "Amount paid, micro-USD."},
    ],
}


def write_custom_type(root: Path, event_type: str, avsc: dict[str, Any], model: str) -> None:
    (root / "schemas").mkdir(parents=True, exist_ok=True)
    (root / "acme_models.py").write_text(model.format(event_type=event_type))
    (root / "schemas" / "invoice_paid.avsc").write_text(
        json.dumps({**avsc, "ledgerbus.event_type": event_type})
    )


@pytest.fixture
def custom_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The CLI's environment plus a team's own schema folder and models."""
    return {
        **cli_env,
        "LEDGERBUS_SCHEMA_DIRS": json.dumps([str(tmp_path / "team" / "schemas")]),
        "PYTHONPATH": str(tmp_path / "team"),
    }


async def test_team_adds_a_type_with_files_only_then_evolves_it(
    custom_env: dict[str, str], isolation: Isolation, tmp_path: Path
) -> None:
    event_type = f"acme.invoice_paid_{isolation.tenant_id[-6:]}"
    team = tmp_path / "team"
    write_custom_type(team, event_type, AVSC_V1, MODEL_V1)

    checked = await run_cli(["schemas", "check", "--register"], custom_env)
    assert checked.returncode == 0, checked.stderr
    assert f"new           {event_type}" in checked.stdout

    data = json.dumps({"invoice_id": "INV-1", "amount_micros": 4_200_000})
    published = await run_cli(
        [
            "publish",
            event_type,
            "--subject",
            "INV-1",
            "--data",
            data,
            "--tenant",
            isolation.tenant_id,
        ],
        custom_env,
    )
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["topic"] == f"{isolation.topic_prefix}ledgerbus.custom"
    tailed = await run_cli(
        [
            "tail",
            "--from-beginning",
            "--types",
            "acme.*",
            "--tenant",
            isolation.tenant_id,
            "--limit",
            "1",
        ],
        custom_env,
    )
    assert json.loads(tailed.stdout)["data"] == {"invoice_id": "INV-1", "amount_micros": 4_200_000}

    # Breaking change: amount becomes a string. Refused, with the field named.
    broken = {
        **AVSC_V1,
        "fields": [AVSC_V1["fields"][0], {**AVSC_V1["fields"][1], "type": "string"}],
    }
    write_custom_type(
        team, event_type, broken, MODEL_V1.replace("amount_micros: int", "amount_micros: str")
    )
    refused = await run_cli(["schemas", "check"], custom_env)
    assert refused.returncode == 1
    assert f"incompatible  {event_type}" in refused.stdout
    assert "amount_micros" in refused.stdout

    # Compatible change: a new optional field with a default.
    evolved = {
        **AVSC_V1,
        "fields": [
            *AVSC_V1["fields"],
            {"name": "note", "type": ["null", "string"], "default": None, "doc": "Free text."},
        ],
    }
    write_custom_type(team, event_type, evolved, MODEL_V1 + "    note: str | None = None\n")
    accepted = await run_cli(["schemas", "check", "--register"], custom_env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert f"compatible    {event_type}" in accepted.stdout


def _model(name: str, event_type: str, with_note: bool) -> type[EventPayload]:
    """A payload class for ``event_type`` outside the global model registry, so two
    versions of one type can live in one process (as two deployments would)."""
    namespace: dict[str, Any] = {"__annotations__": {"invoice_id": str, "amount_micros": int}}
    if with_note:
        namespace["__annotations__"]["note"] = str | None
        namespace["note"] = None
    model: type[EventPayload] = type(name, (EventPayload,), namespace)
    model.event_type = event_type  # set after creation: no global registration
    return model


async def test_old_reader_decodes_events_from_a_newer_writer(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient
) -> None:
    event_type = f"acme.invoice_paid_{isolation.tenant_id[-6:]}"
    old_model = _model("InvoicePaidV1", event_type, with_note=False)
    new_model = _model("InvoicePaidV2", event_type, with_note=True)
    old, new = (
        EventCatalog(default_catalog().envelope_schema),
        EventCatalog(default_catalog().envelope_schema),
    )
    old.register({**AVSC_V1, "ledgerbus.event_type": event_type}, old_model)
    evolved = {
        **AVSC_V1,
        "ledgerbus.event_type": event_type,
        "fields": [
            *AVSC_V1["fields"],
            {"name": "note", "type": ["null", "string"], "default": None, "doc": "Free text."},
        ],
    }
    new.register(evolved, new_model)

    serializer = EventSerializer(old, registry, isolation.topic_prefix)
    await serializer.prepare([event_type])  # v1 registered first, as history would have it
    await ensure_topics(stack.endpoints.kafka_bootstrap, isolation.topic_prefix)
    async with Publisher(
        stack.endpoints.kafka_bootstrap, EventSerializer(new, registry, isolation.topic_prefix)
    ) as publisher:
        event = build_event(
            new.get(event_type),
            subject="INV-9",
            tenant_id=isolation.tenant_id,
            source="t",
            data={"invoice_id": "INV-9", "amount_micros": 5, "note": "paid early"},
        )
        await publisher.publish(event)
        value = (await publisher.serializer.serialize(event)).value

    decoded = await EventDeserializer(old, registry).deserialize(value)
    assert type(decoded.data) is old_model
    assert decoded.data.model_dump() == {"invoice_id": "INV-9", "amount_micros": 5}
    assert decoded.id == event.id

    subject = f"registry-refuses-{isolation.tenant_id}"
    await registry.register(subject, AVSC_V1)
    breaking = {**AVSC_V1, "fields": [{"name": "invoice_id", "type": "long", "doc": "Number."}]}
    with pytest.raises(RegistryClientError) as refused:
        await registry.register(subject, breaking)
    assert refused.value.status_code == 409
