"""``/v1/budgets/{project_id}``: a project's budget and spend, and setting the budget.

Setting publishes ``budget.set``; the budget processor folds it into the
``budgets`` projection, which is what ``GET`` reads (``streams.budgets``).
A project without a budget is not an error: ``GET`` shows its spend with
status ``no_budget``, the same answer for a project nobody has heard of, so
another tenant's project ids reveal nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth.dependencies import require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.problems import Problem, problem_responses
from gateway.projected import projection_router
from gateway.services import GatewayServices, Services
from producers.publisher import build_event
from schemas.models.enums import BudgetPeriod
from streams.budgets import Budgets, BudgetView, InvalidBudget, Status, budget_status, check_event

Reader = Annotated[Principal, Depends(require(Permission.EVENTS_READ))]
Manager = Annotated[Principal, Depends(require(Permission.BUDGETS_MANAGE))]
ProjectId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]

#: Largest amount an Avro ``long`` holds.
MAX_AMOUNT = 2**63 - 1


class NewBudget(BaseModel):
    """The ``budget.set`` payload; the project comes from the path, ``set_by`` from the caller."""

    model_config = ConfigDict(extra="forbid")

    amount_micros: int = Field(ge=0, le=MAX_AMOUNT, description="Budget in micro-USD per period")
    period: BudgetPeriod | None = Field(
        None, description="Calendar period after which spend starts again; null = never"
    )
    timezone: str | None = Field(
        None, max_length=64, description="IANA time zone periods start in; null = UTC"
    )


class BudgetState(BaseModel):
    """A project's budget at the time of the request; money in integer micro-USD."""

    project_id: str
    amount_micros: int | None = Field(description="null while no budget is set")
    period: str | None
    timezone: str | None
    period_start: datetime | None = Field(description="Start of the current period, if any")
    spent_micros: int
    reserved_micros: int = Field(description="What accepted, unfinished runs may still spend")
    remaining_micros: int | None
    status: Status


class BudgetSubmitted(BaseModel):
    """``budget.set`` is published; ``href`` shows the budget once it is applied."""

    event_id: str
    project_id: str
    href: str


def budgets_router() -> APIRouter:
    router = projection_router("budgets", Budgets())

    @router.get("/{project_id}")
    async def get_budget(
        project_id: ProjectId, principal: Reader, services: Services
    ) -> BudgetState:
        """Budget, spend in the current period, reservations, what is left, and status."""
        return await _state(services, principal.tenant_id, project_id)

    @router.put(
        "/{project_id}",
        status_code=202,
        response_model=BudgetSubmitted,
        responses=problem_responses(422),
    )
    async def set_budget(
        project_id: ProjectId, body: NewBudget, principal: Manager, services: Services
    ) -> Response:
        """Publish ``budget.set``. The budget processor applies it within moments;
        ``GET`` (the ``Location``) shows it then. Not waited for here: with the
        streams workers down a PUT would otherwise hang for nothing."""
        event = build_event(
            services.catalog.get("budget.set"),
            subject=project_id,
            tenant_id=principal.tenant_id,
            data={**body.model_dump(), "project_id": project_id, "set_by": principal.subject},
            source="gateway",
        )
        try:
            check_event(event)  # what the processor would dead-letter, refused here
        except InvalidBudget as exc:
            raise Problem(422, str(exc), reason=exc.reason) from None
        await services.publisher.publish(event)
        href = f"/v1/budgets/{quote(project_id, safe='')}"
        submitted = BudgetSubmitted(event_id=str(event.id), project_id=project_id, href=href)
        return JSONResponse(submitted.model_dump(), status_code=202, headers={"Location": href})

    return router


async def _state(services: GatewayServices, tenant_id: str, project_id: str) -> BudgetState:
    async with services.pool.acquire() as conn:
        view: BudgetView = await budget_status(conn, tenant_id, project_id, datetime.now(UTC))
    return BudgetState.model_validate(view, from_attributes=True)
