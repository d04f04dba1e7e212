"""``/v1/runs``: the tenant's agent runs, as the ``runs`` projection folds them.

Read-only: runs start from ``POST /v1/commands`` (``agent.run_requested``) and
move on as agents and the budget processor publish their events. Reading needs
``events:read``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from gateway.auth.dependencies import require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.problems import Problem, problem_responses
from gateway.projected import projection_router
from gateway.services import Services
from streams.approvals import MAX_PAGE
from streams.runs import RunsProjection, RunStatus, get_run, list_runs

Reader = Annotated[Principal, Depends(require(Permission.EVENTS_READ))]

_TEXT = r"^[^\x00]*$"
Text = Annotated[str | None, Query(min_length=1, max_length=200, pattern=_TEXT)]


class RunView(BaseModel):
    run_id: str
    agent_name: str
    project_id: str
    status: RunStatus = Field(description="Of the run's most advanced event")
    correlation_id: str | None
    parent_run_id: str | None = Field(description="The run that handed this one off")
    requested_at: datetime | None
    accepted_at: datetime | None
    started_at: datetime | None = Field(description="First start (a resumed run starts again)")
    finished_at: datetime | None
    duration_ms: int | None
    reason: str | None = Field(description="Why it was rejected or failed")
    cost_micros: int = Field(description="LLM cost so far, integer micro-USD")
    llm_calls: int


class RunPage(BaseModel):
    items: list[RunView]
    next_after: str | None = Field(description="Pass as `after` for the next page; null at the end")


def runs_router() -> APIRouter:
    router = projection_router("runs", RunsProjection())

    @router.get("", responses=problem_responses(422))
    async def list_all(
        principal: Reader,
        services: Services,
        status: Annotated[RunStatus | None, Query()] = None,
        agent_name: Text = None,
        project_id: Text = None,
        correlation_id: Text = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        after: Text = None,
    ) -> RunPage:
        """The tenant's runs matching every filter given, in run id order."""
        found = await list_runs(
            services.pool,
            principal.tenant_id,
            status=status,
            agent_name=agent_name,
            project_id=project_id,
            correlation_id=correlation_id,
            limit=limit,
            after=after,
        )
        return RunPage(
            items=[RunView.model_validate(run, from_attributes=True) for run in found],
            next_after=found[-1].run_id if len(found) == limit else None,
        )

    @router.get("/{run_id}", responses=problem_responses(404, 422))
    async def get_one(
        run_id: Annotated[str, Path(max_length=200, pattern=_TEXT)],
        principal: Reader,
        services: Services,
    ) -> RunView:
        run = await get_run(services.pool, principal.tenant_id, run_id)
        if run is None:
            raise Problem(404, f"no run {run_id!r} in this tenant")
        return RunView.model_validate(run, from_attributes=True)

    return router
