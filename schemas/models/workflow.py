"""Payloads of `workflow.*`: multi-agent workflows as a whole."""

from typing import ClassVar

from pydantic import NonNegativeInt

from schemas.models.base import EventPayload
from schemas.models.enums import FailureReason


class WorkflowStarted(EventPayload):
    event_type: ClassVar[str] = "workflow.started"

    workflow_id: str
    project_id: str
    name: str
    initiated_by: str


class WorkflowCompleted(EventPayload):
    event_type: ClassVar[str] = "workflow.completed"

    workflow_id: str
    project_id: str
    duration_ms: NonNegativeInt
    result: str | None = None


class WorkflowFailed(EventPayload):
    event_type: ClassVar[str] = "workflow.failed"

    workflow_id: str
    project_id: str
    reason: FailureReason
    failed_run_id: str | None = None
    error_message: str
