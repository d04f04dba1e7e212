"""The `.avsc` files, the pydantic models and the catalogue agree, and every event round-trips.

No external services: fastavro and the Apache `avro` library only.
"""

import copy
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import avro.io
import avro.schema
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import NonNegativeInt, ValidationError

from schemas.catalog import (
    AVRO_DIR,
    ENVELOPE_FILE,
    EventCatalog,
    EventType,
    SchemaError,
    UnknownEventType,
    default_catalog,
)
from schemas.conformance import mismatches
from schemas.micros import from_micros, to_micros
from schemas.models import (
    AgentCompleted,
    AgentFailed,
    AgentHandoff,
    AgentHeartbeat,
    AgentMessage,
    AgentRegistered,
    AgentRunAccepted,
    AgentRunRejected,
    AgentRunRequested,
    AgentStarted,
    AgentStatus,
    ApprovalApproved,
    ApprovalDecisionRejected,
    ApprovalDecisionSubmitted,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalRequested,
    AuditCheckpoint,
    BudgetPeriod,
    BudgetSet,
    BudgetStatus,
    BudgetThresholdCrossed,
    ComplianceDataRedacted,
    ComplianceErasureRequested,
    CompliancePiiDetected,
    ComplianceRetentionApplied,
    ComplianceSubjectErased,
    CostRecorded,
    DecisionRejectionReason,
    Envelope,
    EventPayload,
    FailureReason,
    HpkeSuite,
    PiiType,
    ProjectBudgetExceeded,
    RedactionMethod,
    RiskLevel,
    RunRejectionReason,
    SealedBox,
    UtcDateTime,
    Verdict,
    WebhookDeleted,
    WebhookDeliveryDeadLettered,
    WebhookDeliveryFailed,
    WebhookDeliverySucceeded,
    WebhookSubscribed,
    WebhookUpdated,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from schemas.topics import DEFAULT_TOPIC, TOPICS, dead_letter_name, physical_name

# The list in SPEC.md "Events"; the catalogue must hold exactly these built-in types.
SPEC_EVENT_TYPES = {
    *(f"workflow.{action}" for action in ("started", "completed", "failed")),
    *(
        f"agent.{action}"
        for action in (
            "run_requested",
            "run_accepted",
            "run_rejected",
            "started",
            "completed",
            "failed",
            "handoff",
            "message",
            "registered",
            "heartbeat",
        )
    ),
    *(
        f"approval.{action}"
        for action in (
            "requested",
            "decision_submitted",
            "approved",
            "denied",
            "expired",
            "decision_rejected",
        )
    ),
    "cost.recorded",
    "budget.set",
    "budget.threshold_crossed",
    "project.budget_exceeded",
    *(
        f"compliance.{action}"
        for action in (
            "pii_detected",
            "data_redacted",
            "erasure_requested",
            "subject_erased",
            "retention_applied",
        )
    ),
    *(
        f"webhook.{action}"
        for action in (
            "subscribed",
            "updated",
            "deleted",
            "delivery_succeeded",
            "delivery_failed",
            "delivery_dead_lettered",
        )
    ),
    "audit.checkpoint",
}

CATALOG = default_catalog()
TYPE_NAMES = sorted(event_type.name for event_type in CATALOG)

AT = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
EVENT_ID = uuid.UUID("0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
BOX = SealedBox(
    sender="developer",
    recipient="qa-tester",
    sender_key_id="developer-k2",
    recipient_key_id="qa-tester-k1",
    suite=HpkeSuite.X25519_SHA256_CHACHA20POLY1305,
    enc=bytes(range(32)),
    ciphertext=b"\x00\xffsealed context\x01" * 4,
    signature=bytes(range(64)),
    message_id=str(EVENT_ID),
    sealed_at=AT,
)

# One realistic payload per event type, every field set (so every optional branch is
# exercised); the minimal variant of each is derived in `test_round_trip`.
SAMPLES: dict[str, EventPayload] = {
    sample.event_type: sample
    for sample in (
        WorkflowStarted(
            workflow_id="wf-1", project_id="proj-web", name="release", initiated_by="user:ana"
        ),
        WorkflowCompleted(
            workflow_id="wf-1", project_id="proj-web", duration_ms=93_000, result="released 1.4"
        ),
        WorkflowFailed(
            workflow_id="wf-1",
            project_id="proj-web",
            reason=FailureReason.APPROVAL_DENIED,
            failed_run_id="run-7",
            error_message="deploy denied by ops",
        ),
        AgentRunRequested(
            run_id="run-7",
            project_id="proj-web",
            agent_name="developer",
            task="Add OAuth login to the web app",
            risk_level=RiskLevel.MEDIUM,
            cost_estimate_micros=1_250_000,
            requested_by="user:ana",
            parent_run_id="run-6",
            sealed_task=BOX,
        ),
        AgentRunAccepted(
            run_id="run-7",
            project_id="proj-web",
            agent_name="developer",
            reserved_micros=1_250_000,
            sealed_task=BOX,
            task="Add OAuth login to the web app",
            parent_run_id="run-6",
        ),
        AgentRunRejected(
            run_id="run-8",
            project_id="proj-web",
            agent_name="developer",
            reason=RunRejectionReason.BUDGET_EXCEEDED,
            detail="remaining 0.20 USD < estimate 1.25 USD",
        ),
        AgentStarted(
            run_id="run-7", project_id="proj-web", agent_name="developer", instance_id="host-a:412"
        ),
        AgentCompleted(
            run_id="run-7",
            project_id="proj-web",
            agent_name="developer",
            instance_id="host-a:412",
            duration_ms=48_210,
            result="PR #12 opened",
        ),
        AgentFailed(
            run_id="run-7",
            project_id="proj-web",
            agent_name="developer",
            instance_id="host-a:412",
            reason=FailureReason.ERROR,
            error_class="TimeoutError",
            error_message="LLM call timed out",
        ),
        AgentHandoff(run_id="run-7", handoff_run_id="run-9", sealed=BOX),
        AgentMessage(sealed=BOX),
        AgentRegistered(
            agent_name="qa-tester",
            key_id="qa-tester-k2",
            signing_public_key=bytes(range(32, 64)),
            hpke_public_key=bytes(range(64, 96)),
            suite=HpkeSuite.X25519_SHA256_CHACHA20POLY1305,
            role="QA Tester",
            previous_key_id="qa-tester-k1",
            previous_key_valid_until=AT + timedelta(days=1),
            revoked_key_ids=["qa-tester-k0"],
        ),
        AgentHeartbeat(
            agent_name="qa-tester",
            instance_id="host-b:77",
            key_id="qa-tester-k2",
            status=AgentStatus.BUSY,
            active_runs=2,
        ),
        ApprovalRequested(
            approval_id="apr-3",
            run_id="run-9",
            agent_name="qa-tester",
            action="drop the staging database",
            risk_level=RiskLevel.CRITICAL,
            required_permission="approvals:approve",
            expires_at=AT + timedelta(hours=4),
            details="needed to reset fixtures",
        ),
        ApprovalDecisionSubmitted(
            approval_id="apr-3",
            decider="user:bo",
            decider_permissions=["approvals:approve", "budgets:manage"],
            verdict=Verdict.APPROVE,
            comment="ok for staging",
        ),
        ApprovalApproved(
            approval_id="apr-3", run_id="run-9", decider="user:bo", comment="ok for staging"
        ),
        ApprovalDenied(approval_id="apr-3", run_id="run-9", decider="user:bo", comment="not now"),
        ApprovalExpired(approval_id="apr-3", run_id="run-9", expired_at=AT),
        ApprovalDecisionRejected(
            approval_id="apr-3",
            decider="user:cy",
            verdict=Verdict.DENY,
            reason=DecisionRejectionReason.ALREADY_DECIDED,
            detail="approved at 09:26",
        ),
        CostRecorded(
            run_id="run-7",
            project_id="proj-web",
            agent_name="developer",
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=1_843,
            output_tokens=412,
            cost_micros=523,
            latency_ms=1_870,
            priced=False,
        ),
        BudgetSet(
            project_id="proj-web",
            amount_micros=200_000_000,
            period=BudgetPeriod.MONTHLY,
            timezone="Europe/Paris",
            set_by="user:bo",
        ),
        BudgetThresholdCrossed(
            project_id="proj-web",
            threshold_percent=80,
            amount_micros=200_000_000,
            spent_micros=160_000_001,
            status=BudgetStatus.WARNING,
            period_start=AT.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
        ),
        ProjectBudgetExceeded(
            project_id="proj-web",
            amount_micros=200_000_000,
            spent_micros=200_000_523,
            period_start=AT.replace(day=1),
            run_id="run-7",
        ),
        CompliancePiiDetected(
            source_event_id=EVENT_ID,
            source_event_type="agent.run_requested",
            pii_types=[PiiType.EMAIL, PiiType.PHONE],
            field_paths=["data.task"],
            detector="regex-pii 1.2",
        ),
        ComplianceDataRedacted(
            source_event_id=EVENT_ID,
            source_event_type="agent.run_requested",
            field_paths=["data.task"],
            method=RedactionMethod.MASK,
        ),
        ComplianceErasureRequested(
            request_id="er-1",
            data_subject_id="customer-881",
            requested_by="user:dpo",
            legal_basis="GDPR Art. 17",
        ),
        ComplianceSubjectErased(
            request_id="er-1", data_subject_id="customer-881", erased_records=37
        ),
        ComplianceRetentionApplied(
            policy_name="heartbeats-30d",
            event_type_patterns=["agent.heartbeat"],
            cutoff=AT - timedelta(days=30),
            removed_records=120_000,
        ),
        WebhookSubscribed(
            webhook_id="wh-1",
            url="https://hooks.example.com/ledgerbus",
            event_types=["agent.*", "approval.requested"],
            secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ordered=True,
            enabled=False,
            description="ops channel",
        ),
        WebhookUpdated(
            webhook_id="wh-1",
            url="https://hooks.example.com/v2",
            event_types=["agent.completed"],
            secret="whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            ordered=False,
            enabled=False,
            reason="410 Gone",
        ),
        WebhookDeleted(webhook_id="wh-1"),
        WebhookDeliverySucceeded(
            delivery_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            webhook_id="wh-1",
            source_event_id=EVENT_ID,
            source_event_type="agent.completed",
            attempt=2,
            status_code=204,
            latency_ms=35,
            response_body="",
        ),
        WebhookDeliveryFailed(
            delivery_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            webhook_id="wh-1",
            source_event_id=EVENT_ID,
            source_event_type="agent.completed",
            attempt=1,
            status_code=503,
            latency_ms=15_000,
            error="read timeout",
            response_body="<html>busy</html>",
            next_attempt_at=AT + timedelta(seconds=5),
        ),
        WebhookDeliveryDeadLettered(
            delivery_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            webhook_id="wh-1",
            source_event_id=EVENT_ID,
            source_event_type="agent.completed",
            attempts=8,
            last_status_code=500,
            last_error="connection refused",
        ),
        AuditCheckpoint(
            position=10_000,
            head_hash=bytes(range(100, 132)),
            signed_at=AT,
            signature=bytes(range(1, 65)),
            key_id="audit-k1",
        ),
    )
}


def event_of(payload: EventPayload) -> Envelope[Any]:
    return Envelope(
        id=EVENT_ID,
        type=payload.event_type,
        source="tests",
        subject="subject-1",
        tenant_id="acme",
        time=AT,
        correlation_id="corr-1",
        causation_id=str(uuid.UUID(int=7)),
        data=payload,
    )


def avro_bytes(event_type: EventType, event: Envelope[Any]) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, event_type.parsed_schema, event_type.to_record(event))
    return buffer.getvalue()


def read_back(event_type: EventType, encoded: bytes) -> Envelope[Any]:
    record = schemaless_reader(io.BytesIO(encoded), event_type.parsed_schema, None)
    assert isinstance(record, dict)
    return event_type.from_record(record)


def parsed(schema: dict[str, Any]) -> dict[str, Any]:
    result = parse_schema(schema)
    assert isinstance(result, dict)
    return result


def walk_named(avro_type: Any) -> Iterator[dict[str, Any]]:
    """Every record and enum definition inside an (unparsed) Avro type."""
    if isinstance(avro_type, list):
        for branch in avro_type:
            yield from walk_named(branch)
    elif isinstance(avro_type, dict):
        if avro_type.get("type") in ("record", "enum"):
            yield avro_type
        for field in avro_type.get("fields", ()):
            yield from walk_named(field["type"])
        for key in ("items", "values"):
            if key in avro_type:
                yield from walk_named(avro_type[key])
        if isinstance(avro_type.get("type"), dict | list):
            yield from walk_named(avro_type["type"])


def avro_fields(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for record in walk_named(schema):
        yield from record.get("fields", ())


# ---------------------------------------------------------------------------- coverage


def test_catalog_holds_exactly_the_spec_event_types() -> None:
    assert set(TYPE_NAMES) == SPEC_EVENT_TYPES


def test_every_payload_file_sits_where_its_type_says() -> None:
    files = {
        path.relative_to(AVRO_DIR).as_posix()
        for path in AVRO_DIR.rglob("*.avsc")
        if path != ENVELOPE_FILE
    }
    assert files == {name.replace(".", "/") + ".avsc" for name in SPEC_EVENT_TYPES}


# ---------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_model_and_schema_agree(name: str) -> None:
    event_type = CATALOG.get(name)
    assert event_type.model.event_type == name
    assert event_type.payload_schema["ledgerbus.event_type"] == name
    assert mismatches(event_type.parsed_schema, event_type.envelope_model) == []


# Each mutation of agent.run_requested's schema is a drift the comparison must report.
def _set_field(name: str, **changes: Any) -> Any:
    def mutate(schema: dict[str, Any]) -> None:
        field = next(f for f in schema["fields"] if f["name"] == name)
        field.update(changes)

    return mutate


def _make_required(name: str) -> Any:
    def mutate(schema: dict[str, Any]) -> None:
        field = next(f for f in schema["fields"] if f["name"] == name)
        field["type"] = field["type"][-1]
        del field["default"]

    return mutate


def _drop_field(name: str) -> Any:
    def mutate(schema: dict[str, Any]) -> None:
        schema["fields"] = [f for f in schema["fields"] if f["name"] != name]

    return mutate


def _add_field(field: dict[str, Any]) -> Any:
    return lambda schema: schema["fields"].append(field)


def _drop_symbol(schema: dict[str, Any]) -> None:
    risk = next(f for f in schema["fields"] if f["name"] == "risk_level")
    risk["type"]["symbols"].remove("critical")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set_field("cost_estimate_micros", type="string"), "cost_estimate_micros: string"),
        (_set_field("cost_estimate_micros", type="boolean"), "cost_estimate_micros: boolean"),
        (_set_field("task", type=["null", "string"], default=None), "task: optional in the schema"),
        (_make_required("requested_by"), "requested_by: optional in the model"),
        (_set_field("requested_by", default="someone"), "requested_by: default 'someone'"),
        (_set_field("task", default="x"), "task: has a default in the schema, required"),
        (_drop_field("parent_run_id"), "parent_run_id: in the model, not in the schema"),
        (_add_field({"name": "extra", "type": "long"}), "extra: in the schema, not in the model"),
        (_drop_symbol, "risk_level: symbols"),
        (
            _set_field("task", type={"type": "string", "logicalType": "uuid"}),
            "task: uuid in the schema",
        ),
        (
            _set_field("task", type={"type": "array", "items": "string"}),
            "task: array in the schema",
        ),
    ],
)
def test_agreement_check_reports_drift(mutate: Any, expected: str) -> None:
    event_type = CATALOG.get("agent.run_requested")
    payload = copy.deepcopy(event_type.payload_schema)
    mutate(payload)
    problems = mismatches(parsed(payload), AgentRunRequested)
    assert any(expected in problem for problem in problems), problems


def test_agreement_check_walks_nested_records_and_arrays() -> None:
    handoff = copy.deepcopy(CATALOG.get("agent.handoff").payload_schema)
    box = next(f for f in handoff["fields"] if f["name"] == "sealed")["type"]
    box["fields"] = [f for f in box["fields"] if f["name"] != "enc"]
    assert mismatches(parsed(handoff), AgentHandoff) == [
        "AgentHandoff.sealed.enc: in the model, not in the schema"
    ]

    detected = copy.deepcopy(CATALOG.get("compliance.pii_detected").payload_schema)
    paths = next(f for f in detected["fields"] if f["name"] == "field_paths")
    paths["type"]["items"] = "long"
    assert mismatches(parsed(detected), CompliancePiiDetected) == [
        "CompliancePiiDetected.field_paths[]: long in the schema, <class 'str'> in the model"
    ]


def test_envelope_model_mirrors_envelope_schema() -> None:
    names = [field["name"] for field in CATALOG.envelope_schema["fields"]]
    assert [*names, "data"] == list(Envelope.model_fields)
    for name in TYPE_NAMES:
        composed = CATALOG.get(name).schema
        assert [f["name"] for f in composed["fields"]] == [*names, "data"]
        assert (
            composed["name"] == f"ledgerbus.events.{CATALOG.get(name).payload_schema['name']}Event"
        )


# ---------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_every_record_enum_and_field_is_documented(name: str) -> None:
    schema = CATALOG.get(name).schema
    undocumented = [d["name"] for d in walk_named(schema) if not d.get("doc", "").strip()]
    undocumented += [f["name"] for f in avro_fields(schema) if not f.get("doc", "").strip()]
    assert undocumented == []


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_money_counts_and_time_are_integers(name: str) -> None:
    schema = CATALOG.get(name).schema
    for field in avro_fields(schema):
        avro_type = field["type"][-1] if isinstance(field["type"], list) else field["type"]
        if field["name"].endswith(("_micros", "_tokens", "_ms")):
            assert avro_type == "long", field["name"]
        if field["name"].endswith(("_at", "_until", "_start")) or field["name"] == "time":
            assert avro_type == {"type": "long", "logicalType": "timestamp-micros"}, field
        assert avro_type not in ("float", "double"), field["name"]


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_money_fields_reject_negative_and_fractional_amounts(name: str) -> None:
    event_type = CATALOG.get(name)
    money = [f["name"] for f in avro_fields(event_type.payload_schema) if "micros" in f["name"]]
    sample = SAMPLES[name].model_dump()
    for field in money:
        for bad in (-1, 1.5):
            with pytest.raises(ValidationError):
                event_type.model.model_validate({**sample, field: bad})


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_optional_fields_default_to_null_and_enums_can_evolve(name: str) -> None:
    schema = CATALOG.get(name).payload_schema
    for field in avro_fields(schema):
        if isinstance(field["type"], list):
            assert field["type"][0] == "null"
            assert field.get("default", "missing") is None, field["name"]
    for enum in (d for d in walk_named(schema) if d["type"] == "enum"):
        assert enum["symbols"][0] == "unknown" == enum["default"], enum["name"]


def test_shared_named_types_are_identical_everywhere() -> None:
    definitions: dict[str, dict[str, Any]] = {}
    for name in TYPE_NAMES:
        for definition in walk_named(CATALOG.get(name).payload_schema):
            if definition.get("ledgerbus.event_type"):
                continue
            known = definitions.setdefault(definition["name"], definition)
            assert known == definition, f"{definition['name']} differs in {name}"
    assert {"RiskLevel", "SealedBox", "HpkeSuite", "FailureReason"} <= definitions.keys()


def test_old_reader_decodes_new_enum_symbol_as_unknown() -> None:
    new = copy.deepcopy(CATALOG.get("agent.run_requested").schema)
    old = copy.deepcopy(new)
    risk = next(f for f in old["fields"][-1]["type"]["fields"] if f["name"] == "risk_level")
    risk["type"]["symbols"].remove("critical")
    event = event_of(SAMPLES["agent.run_requested"].model_copy(update={"risk_level": "critical"}))
    encoded = avro_bytes(CATALOG.get("agent.run_requested"), event)
    record = schemaless_reader(io.BytesIO(encoded), parse_schema(new), parse_schema(old))
    assert isinstance(record, dict)
    assert record["data"]["risk_level"] == "unknown"


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_sample_is_complete(name: str) -> None:
    if name not in SAMPLES:
        pytest.fail(f"no sample for {name}: add one to SAMPLES")
    sample = SAMPLES[name]
    assert type(sample) is CATALOG.get(name).model
    unset = [field for field, value in sample.__dict__.items() if value is None]
    assert sample.model_fields_set == set(type(sample).model_fields), "give every field"
    assert unset == [], "give optional fields a value: the minimal variant covers null"


@pytest.mark.parametrize("name", TYPE_NAMES)
@pytest.mark.parametrize("variant", ["full", "minimal"])
def test_round_trip_through_avro(name: str, variant: str) -> None:
    event_type = CATALOG.get(name)
    if name not in SAMPLES:
        pytest.fail(f"no sample for {name}: add one to SAMPLES")
    payload = SAMPLES[name]
    if variant == "minimal":
        required = [f["name"] for f in event_type.payload_schema["fields"] if "default" not in f]
        payload = event_type.model.model_validate({f: getattr(payload, f) for f in required})
    event = event_of(payload)

    assert read_back(event_type, avro_bytes(event_type, event)) == event
    assert event_type.from_record(event_type.to_record(event)) == event
    assert event_type.envelope_model.model_validate_json(event.model_dump_json()) == event


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_apache_avro_reads_what_ledgerbus_writes(name: str) -> None:
    event_type = CATALOG.get(name)
    event = event_of(SAMPLES[name])
    schema = avro.schema.parse(json.dumps(event_type.schema))
    avro.schema.parse(json.dumps(event_type.payload_schema))
    decoder = avro.io.BinaryDecoder(io.BytesIO(avro_bytes(event_type, event)))
    record = avro.io.DatumReader(schema).read(decoder)
    assert isinstance(record, dict)
    assert (record["type"], record["tenant_id"], record["time"]) == (name, "acme", AT)
    assert str(record["id"]) == str(EVENT_ID)
    assert record["data"].keys() == event_type.model.model_fields.keys()


def test_record_is_plain_avro_data() -> None:
    event_type = CATALOG.get("approval.requested")
    record = event_type.to_record(event_of(SAMPLES["approval.requested"]))
    assert record["id"] == str(EVENT_ID)
    assert record["time"] == to_micros(AT)
    assert record["data"]["expires_at"] == to_micros(AT + timedelta(hours=4))
    assert record["data"]["risk_level"] == "critical"
    assert isinstance(record["data"]["risk_level"], str)


def test_to_record_refuses_another_types_event() -> None:
    with pytest.raises(TypeError, match=r"agent\.started carries AgentStarted"):
        CATALOG.get("agent.started").to_record(event_of(SAMPLES["agent.completed"]))


# ---------------------------------------------------------------------------- envelope


def test_time_must_be_aware_and_is_normalised_to_utc() -> None:
    payload = SAMPLES["webhook.deleted"]
    paris = timezone(timedelta(hours=1))
    event = event_of(payload).model_copy(update={"time": AT.astimezone(paris)})
    revalidated = Envelope[WebhookDeleted].model_validate(event.__dict__)
    assert revalidated.time == AT and revalidated.time.tzinfo is UTC
    with pytest.raises(ValidationError, match="timezone-aware"):
        Envelope[WebhookDeleted].model_validate({**event.__dict__, "time": AT.replace(tzinfo=None)})
    from_int = Envelope[WebhookDeleted].model_validate({**event.__dict__, "time": to_micros(AT)})
    assert from_int.time == AT


@pytest.mark.parametrize(
    "change",
    [{"tenant_id": ""}, {"subject": ""}, {"type": "webhook.updated"}, {"unexpected": 1}],
)
def test_envelope_rejects_bad_attributes(change: dict[str, Any]) -> None:
    event = event_of(SAMPLES["webhook.deleted"])
    with pytest.raises(ValidationError):
        Envelope[WebhookDeleted].model_validate({**event.__dict__, **change})


def test_new_envelope_fills_id_type_and_time() -> None:
    before = datetime.now(UTC)
    event = Envelope.new(SAMPLES["agent.started"], source="s", subject="run-7", tenant_id="t")
    assert event.type == "agent.started"
    assert event.id != Envelope.new(event.data, source="s", subject="x", tenant_id="t").id
    assert before <= event.time <= datetime.now(UTC)


@pytest.mark.parametrize("micros", [0, 1, -1, to_micros(AT), 253_402_300_799_999_999])
def test_micros_conversion_is_exact(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros


# ---------------------------------------------------------------------------- lookups


def test_unknown_type_lists_close_matches() -> None:
    with pytest.raises(UnknownEventType) as error:
        CATALOG.get("agent.run_request")
    assert "agent.run_requested" in error.value.close_matches
    assert "did you mean" in str(error.value) and "agent.run_requested" in str(error.value)

    with pytest.raises(UnknownEventType) as far:
        CATALOG.get("zzz")
    assert far.value.close_matches == []
    assert "did you mean" not in str(far.value)


# ---------------------------------------------------------------------------- topics


def test_every_event_type_has_a_topic_and_every_topic_is_used() -> None:
    used = {CATALOG.get(name).topic.name for name in TYPE_NAMES}
    assert used == set(TOPICS) - {DEFAULT_TOPIC}
    for topic in TOPICS.values():
        assert 3 <= topic.partitions <= 6
        assert topic.retention_ms > 0 and topic.doc
        assert topic.config() == {
            "retention.ms": str(topic.retention_ms),
            "cleanup.policy": topic.cleanup_policy,
        }


def test_topic_names() -> None:
    assert physical_name("agent-runs") == "ledgerbus.agent-runs"
    assert physical_name(TOPICS["costs"], prefix="staging.") == "staging.ledgerbus.costs"
    assert dead_letter_name(physical_name("costs")) == "ledgerbus.costs.dlq"
    with pytest.raises(KeyError, match="known topics"):
        physical_name("cost")


# ---------------------------------------------------------------------------- custom types


class InvoiceApproved(EventPayload):
    """A team's own event type, defined outside ledgerbus."""

    event_type: ClassVar[str] = "acme.invoice_approved"

    invoice_id: str
    amount_micros: NonNegativeInt
    approved_at: UtcDateTime
    approver: str | None = None


INVOICE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "InvoiceApproved",
    "namespace": "acme.events",
    "doc": "An invoice was approved for payment.",
    "ledgerbus.event_type": "acme.invoice_approved",
    "fields": [
        {"name": "invoice_id", "type": "string", "doc": "Invoice number."},
        {"name": "amount_micros", "type": "long", "doc": "Amount in micro-USD."},
        {
            "name": "approved_at",
            "type": {"type": "long", "logicalType": "timestamp-micros"},
            "doc": "When it was approved.",
        },
        {"name": "approver", "type": ["null", "string"], "default": None, "doc": "Who."},
    ],
}
INVOICE = InvoiceApproved(invoice_id="INV-9", amount_micros=99_990_000, approved_at=AT)


def test_custom_type_registered_at_run_time_round_trips() -> None:
    catalog = EventCatalog.load()
    assert "acme.invoice_approved" not in catalog
    event_type = catalog.register(INVOICE_SCHEMA, InvoiceApproved)
    assert catalog.get("acme.invoice_approved") is event_type
    assert event_type.topic.name == DEFAULT_TOPIC
    assert event_type.schema["name"] == "acme.events.InvoiceApprovedEvent"
    event = event_of(INVOICE)
    assert read_back(event_type, avro_bytes(event_type, event)) == event
    assert catalog.register(INVOICE_SCHEMA, InvoiceApproved) is event_type
    assert "acme.invoice_approved" not in CATALOG


@pytest.mark.parametrize(
    "model_path", [None, "{module}:InvoiceApproved", "{module}.InvoiceApproved"]
)
def test_custom_type_loaded_from_a_teams_folder(tmp_path: Path, model_path: str | None) -> None:
    schema = {**INVOICE_SCHEMA, "ledgerbus.topic": "approvals"}
    if model_path is not None:  # else found as the EventPayload subclass for the type
        schema["ledgerbus.model"] = model_path.format(module=InvoiceApproved.__module__)
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "invoice_approved.avsc").write_text(json.dumps(schema))
    catalog = EventCatalog.load(extra_dirs=[tmp_path])
    event_type = catalog.get("acme.invoice_approved")
    assert event_type.model is InvoiceApproved
    assert event_type.topic.name == "approvals"
    assert len(catalog) == len(CATALOG) + 1
    event = event_of(INVOICE)
    assert read_back(event_type, avro_bytes(event_type, event)) == event


def _rename(schema: dict[str, Any], field: str, new: str) -> dict[str, Any]:
    changed = copy.deepcopy(schema)
    next(f for f in changed["fields"] if f["name"] == field)["name"] = new
    return changed


@pytest.mark.parametrize(
    ("schema", "topic", "message"),
    [
        (_rename(INVOICE_SCHEMA, "approver", "approved_by"), None, "approved_by: in the schema"),
        ({**INVOICE_SCHEMA, "ledgerbus.event_type": "Invoice"}, None, "dotted lower-case"),
        ({**INVOICE_SCHEMA, "ledgerbus.event_type": "acme.other"}, None, "event_type must be"),
        (INVOICE_SCHEMA, "invoices", "unknown topic 'invoices'"),
        ({**INVOICE_SCHEMA, "fields": [{"name": "x", "type": "nope"}]}, None, "invalid Avro"),
    ],
)
def test_bad_custom_types_are_refused_clearly(
    schema: dict[str, Any], topic: str | None, message: str
) -> None:
    catalog = EventCatalog.load()
    with pytest.raises(SchemaError, match=message):
        catalog.register(schema, InvoiceApproved, topic=topic)
    assert "acme.invoice_approved" not in catalog


def test_a_registered_type_cannot_be_redefined() -> None:
    changed = _rename(CATALOG.get("agent.started").payload_schema, "instance_id", "host")
    with pytest.raises(SchemaError, match="already registered"):
        EventCatalog.load().register(changed, AgentStarted)


def test_a_folder_schema_without_model_is_refused(tmp_path: Path) -> None:
    schema = {**INVOICE_SCHEMA, "ledgerbus.event_type": "acme.unmodelled"}
    (tmp_path / "unmodelled.avsc").write_text(json.dumps(schema))
    with pytest.raises(SchemaError, match=r"unmodelled\.avsc: no model for 'acme.unmodelled'"):
        EventCatalog.load(extra_dirs=[tmp_path])


def test_two_models_cannot_claim_one_event_type() -> None:
    with pytest.raises(TypeError, match="already has a model"):

        class Duplicate(EventPayload):
            event_type: ClassVar[str] = "acme.invoice_approved"


def test_a_missing_schema_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        EventCatalog.load(extra_dirs=[tmp_path / "nope"])
