"""Payloads of `agent.*`: run lifecycle, sealed agent-to-agent traffic, key directory."""

from typing import ClassVar

from pydantic import Field, NonNegativeInt

from schemas.models.base import EventPayload, Record, UtcDateTime
from schemas.models.enums import (
    AgentStatus,
    FailureReason,
    HpkeSuite,
    RiskLevel,
    RunRejectionReason,
)


class SealedBox(Record):
    """HPKE-sealed, Ed25519-signed bytes; one shape for every sealed payload."""

    sender: str
    recipient: str
    sender_key_id: str
    recipient_key_id: str
    suite: HpkeSuite
    enc: bytes
    ciphertext: bytes
    signature: bytes = Field(min_length=64, max_length=64)
    message_id: str | None = None
    sealed_at: UtcDateTime | None = None


class AgentRunRequested(EventPayload):
    event_type: ClassVar[str] = "agent.run_requested"

    run_id: str
    project_id: str
    agent_name: str
    task: str
    risk_level: RiskLevel
    cost_estimate_micros: NonNegativeInt
    requested_by: str | None = None
    parent_run_id: str | None = None
    sealed_task: SealedBox | None = None


class AgentRunAccepted(EventPayload):
    event_type: ClassVar[str] = "agent.run_accepted"

    run_id: str
    project_id: str
    agent_name: str
    reserved_micros: NonNegativeInt
    sealed_task: SealedBox | None = None
    task: str | None = None
    parent_run_id: str | None = None


class AgentRunRejected(EventPayload):
    event_type: ClassVar[str] = "agent.run_rejected"

    run_id: str
    project_id: str
    agent_name: str
    reason: RunRejectionReason
    detail: str | None = None


class AgentStarted(EventPayload):
    event_type: ClassVar[str] = "agent.started"

    run_id: str
    project_id: str
    agent_name: str
    instance_id: str


class AgentCompleted(EventPayload):
    event_type: ClassVar[str] = "agent.completed"

    run_id: str
    project_id: str
    agent_name: str
    instance_id: str
    duration_ms: NonNegativeInt
    result: str | None = None


class AgentFailed(EventPayload):
    event_type: ClassVar[str] = "agent.failed"

    run_id: str
    project_id: str
    agent_name: str
    instance_id: str | None = None
    reason: FailureReason
    error_class: str | None = None
    error_message: str


class AgentHandoff(EventPayload):
    event_type: ClassVar[str] = "agent.handoff"

    run_id: str
    handoff_run_id: str
    sealed: SealedBox


class AgentMessage(EventPayload):
    event_type: ClassVar[str] = "agent.message"

    sealed: SealedBox


class AgentRegistered(EventPayload):
    event_type: ClassVar[str] = "agent.registered"

    agent_name: str
    key_id: str
    signing_public_key: bytes = Field(min_length=32, max_length=32)
    hpke_public_key: bytes
    suite: HpkeSuite
    role: str | None = None
    previous_key_id: str | None = None
    previous_key_valid_until: UtcDateTime | None = None
    revoked_key_ids: list[str] = []


class AgentHeartbeat(EventPayload):
    event_type: ClassVar[str] = "agent.heartbeat"

    agent_name: str
    instance_id: str
    key_id: str
    status: AgentStatus
    active_runs: NonNegativeInt
