"""Payloads of `approval.*`: human-in-the-loop decisions on risky agent actions."""

from typing import ClassVar

from schemas.models.base import EventPayload, UtcDateTime
from schemas.models.enums import DecisionRejectionReason, RiskLevel, Verdict


class ApprovalRequested(EventPayload):
    event_type: ClassVar[str] = "approval.requested"

    approval_id: str
    run_id: str
    agent_name: str
    action: str
    risk_level: RiskLevel
    required_permission: str
    expires_at: UtcDateTime
    details: str | None = None


class ApprovalDecisionSubmitted(EventPayload):
    event_type: ClassVar[str] = "approval.decision_submitted"

    approval_id: str
    decider: str
    decider_permissions: list[str]
    verdict: Verdict
    comment: str | None = None


class ApprovalApproved(EventPayload):
    event_type: ClassVar[str] = "approval.approved"

    approval_id: str
    run_id: str
    decider: str
    comment: str | None = None


class ApprovalDenied(EventPayload):
    event_type: ClassVar[str] = "approval.denied"

    approval_id: str
    run_id: str
    decider: str
    comment: str | None = None


class ApprovalExpired(EventPayload):
    event_type: ClassVar[str] = "approval.expired"

    approval_id: str
    run_id: str
    expired_at: UtcDateTime


class ApprovalDecisionRejected(EventPayload):
    event_type: ClassVar[str] = "approval.decision_rejected"

    approval_id: str
    decider: str
    verdict: Verdict
    reason: DecisionRejectionReason
    detail: str | None = None
