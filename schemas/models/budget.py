"""Payloads about money: `cost.recorded`, `budget.*`, `project.budget_exceeded`.

Amounts are integer micro-USD (`*_micros`): floats would drift when summed.
"""

from typing import ClassVar

from pydantic import Field, NonNegativeInt

from schemas.models.base import EventPayload, UtcDateTime
from schemas.models.enums import BudgetPeriod, BudgetStatus


class CostRecorded(EventPayload):
    event_type: ClassVar[str] = "cost.recorded"

    run_id: str
    project_id: str
    agent_name: str
    provider: str
    model: str
    input_tokens: NonNegativeInt
    output_tokens: NonNegativeInt
    cost_micros: NonNegativeInt
    latency_ms: NonNegativeInt
    priced: bool = True


class BudgetSet(EventPayload):
    event_type: ClassVar[str] = "budget.set"

    project_id: str
    amount_micros: NonNegativeInt
    period: BudgetPeriod | None = None
    timezone: str | None = None
    set_by: str | None = None


class BudgetThresholdCrossed(EventPayload):
    event_type: ClassVar[str] = "budget.threshold_crossed"

    project_id: str
    threshold_percent: int = Field(ge=1)
    amount_micros: NonNegativeInt
    spent_micros: NonNegativeInt
    status: BudgetStatus
    period_start: UtcDateTime | None = None


class ProjectBudgetExceeded(EventPayload):
    event_type: ClassVar[str] = "project.budget_exceeded"

    project_id: str
    amount_micros: NonNegativeInt
    spent_micros: NonNegativeInt
    period_start: UtcDateTime | None = None
    run_id: str | None = None
