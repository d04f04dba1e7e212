"""``/v1/approvals``: list the tenant's approvals, and approve or deny one.

A decision is a command (``approval.decision_submitted``); the approvals
processor is the one judge (``streams.approval_processor``): it answers with
a verdict, or a rejection (already decided, expired, not found, forbidden)
that changes nothing. The gateway waits briefly for that outcome in the
``approvals`` projection and answers with it, or 202 and a link when the
processor is slow.

An approval the tenant does not have is 404 at once, before anything is
published: another tenant's approval ids look exactly like unknown ones.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth.dependencies import require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.problems import Problem, problem_responses
from gateway.projected import projection_router, wait_for
from gateway.services import Services
from producers.publisher import build_event
from schemas.models.enums import Verdict
from streams.approvals import (
    MAX_PAGE,
    Approval,
    ApprovalsProjection,
    ApprovalStatus,
    Rejection,
    get_approval,
    get_rejection,
    list_approvals,
)

Reader = Annotated[Principal, Depends(require(Permission.EVENTS_READ))]
Decider = Annotated[Principal, Depends(require(Permission.APPROVALS_APPROVE))]
ApprovalId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]

#: A rejection reason -> the HTTP status it is answered with.
REJECTION_STATUS = {"not_found": 404, "forbidden": 403, "already_decided": 409, "expired": 409}


class ApprovalPage(BaseModel):
    items: list[Approval]
    next_after: str | None = Field(description="Pass as `after` for the next page; null at the end")


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(
        None, max_length=2000, pattern=r"^[^\x00]*$", description="Why; kept as the comment"
    )


class DecisionSubmitted(BaseModel):
    """The command is published but the processor has not answered yet."""

    command_id: uuid.UUID
    approval_id: str
    href: str


class Decided(BaseModel):
    """The verdict this decision produced."""

    command_id: uuid.UUID
    approval: Approval


def _refused(rejection: Rejection, approval: Approval) -> Problem:
    """The processor's rejection as a problem; ``forbidden`` names the permission
    the approval needs, as the gateway's own 403s do."""
    extra: dict[str, Any] = {
        "reason": rejection.reason,
        "command_id": rejection.command_id,
        "approval_id": rejection.approval_id,
    }
    if rejection.reason == "forbidden":
        extra["permission"] = approval.required_permission
    detail = rejection.detail or rejection.reason.replace("_", " ")
    return Problem(REJECTION_STATUS.get(rejection.reason, 409), detail, **extra)


def approvals_router() -> APIRouter:
    router = projection_router("approvals", ApprovalsProjection())

    @router.get("", responses=problem_responses(422))
    async def list_all(
        principal: Reader,
        services: Services,
        status: ApprovalStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        after: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]*$")] = None,
    ) -> ApprovalPage:
        """The tenant's approvals in id order, optionally of one status."""
        found = await list_approvals(
            services.pool, principal.tenant_id, status, limit=limit, after=after
        )
        return ApprovalPage(
            items=[approval for approval in found],
            next_after=found[-1].approval_id if len(found) == limit else None,
        )

    @router.get("/{approval_id}", responses=problem_responses(404))
    async def get_one(approval_id: ApprovalId, principal: Reader, services: Services) -> Approval:
        approval = await get_approval(services.pool, principal.tenant_id, approval_id)
        if approval is None:
            raise Problem(404, f"no approval {approval_id!r} in this tenant")
        return approval

    async def decide(
        approval_id: str,
        verdict: Verdict,
        body: DecisionBody,
        principal: Principal,
        services: Services,
    ) -> Decided | Response:
        tenant = principal.tenant_id
        requested = await get_approval(services.pool, tenant, approval_id)
        if requested is None:
            raise Problem(404, f"no approval {approval_id!r} in this tenant")
        command = build_event(
            services.catalog.get("approval.decision_submitted"),
            subject=approval_id,  # one partition per approval: its decisions stay in order
            tenant_id=tenant,
            data={
                "approval_id": approval_id,
                "decider": principal.subject,
                "decider_permissions": sorted(p.value for p in principal.permissions),
                "verdict": verdict,
                "comment": body.reason,
            },
            source="gateway",
        )
        await services.publisher.publish(command)

        async def answered() -> Approval | Rejection | None:
            rejection = await get_rejection(services.pool, tenant, str(command.id))
            if rejection is not None:
                return rejection
            approval = await get_approval(services.pool, tenant, approval_id)
            decided = approval is not None and approval.deciding_event_id == command.id
            return approval if decided else None

        outcome = await wait_for(answered, services.settings.approval_wait_seconds)
        if isinstance(outcome, Approval):
            return Decided(command_id=command.id, approval=outcome)
        if isinstance(outcome, Rejection):
            raise _refused(outcome, requested)
        href = f"/v1/approvals/{quote(approval_id, safe='')}"
        submitted = DecisionSubmitted(command_id=command.id, approval_id=approval_id, href=href)
        return JSONResponse(
            submitted.model_dump(mode="json"), status_code=202, headers={"Location": href}
        )

    decision_responses = {202: {"model": DecisionSubmitted}, **problem_responses(404, 409, 422)}

    @router.post("/{approval_id}/approve", response_model=Decided, responses=decision_responses)
    async def approve(
        approval_id: ApprovalId,
        principal: Decider,
        services: Services,
        body: DecisionBody | None = None,
    ) -> Decided | Response:
        """Approve: 200 with the verdict, 404/403/409 with the processor's reason for
        refusing, or 202 if it has not answered within the configured wait."""
        return await decide(
            approval_id, Verdict.APPROVE, body or DecisionBody(), principal, services
        )

    @router.post("/{approval_id}/deny", response_model=Decided, responses=decision_responses)
    async def deny(
        approval_id: ApprovalId,
        principal: Decider,
        services: Services,
        body: DecisionBody | None = None,
    ) -> Decided | Response:
        """Deny; answered like ``approve``."""
        return await decide(approval_id, Verdict.DENY, body or DecisionBody(), principal, services)

    return router
