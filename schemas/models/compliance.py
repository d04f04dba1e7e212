"""Payloads of `compliance.*`: personal data found, redacted, erased or expired."""

import uuid
from typing import ClassVar

from pydantic import NonNegativeInt

from schemas.models.base import EventPayload, UtcDateTime
from schemas.models.enums import PiiType, RedactionMethod


class CompliancePiiDetected(EventPayload):
    event_type: ClassVar[str] = "compliance.pii_detected"

    source_event_id: uuid.UUID
    source_event_type: str
    pii_types: list[PiiType]
    field_paths: list[str]
    detector: str


class ComplianceDataRedacted(EventPayload):
    event_type: ClassVar[str] = "compliance.data_redacted"

    source_event_id: uuid.UUID
    source_event_type: str
    field_paths: list[str]
    method: RedactionMethod


class ComplianceErasureRequested(EventPayload):
    event_type: ClassVar[str] = "compliance.erasure_requested"

    request_id: str
    data_subject_id: str
    requested_by: str
    legal_basis: str | None = None


class ComplianceSubjectErased(EventPayload):
    event_type: ClassVar[str] = "compliance.subject_erased"

    request_id: str
    data_subject_id: str
    erased_records: NonNegativeInt


class ComplianceRetentionApplied(EventPayload):
    event_type: ClassVar[str] = "compliance.retention_applied"

    policy_name: str
    event_type_patterns: list[str]
    cutoff: UtcDateTime
    removed_records: NonNegativeInt
