"""Approvals through a running pipeline: requests, decision commands, and what came of them."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from producers.publisher import build_event
from schemas.models import Envelope
from streams.approvals import Approval, get_approval
from tests.support.archive import eventually
from tests.support.pipeline import CATALOG, Pipeline

PERMISSION = "approvals:approve"
VERDICTS = ("approval.approved", "approval.denied", "approval.expired")


async def request_approval(
    pipeline: Pipeline,
    tenant: str,
    *,
    expires_in: timedelta = timedelta(hours=1),
    permission: str = PERMISSION,
) -> str:
    """Publish ``approval.requested`` for a new approval; returns its id."""
    approval_id = f"appr-{uuid.uuid4().hex[:12]}"
    await pipeline.publish(
        "approval.requested",
        tenant_id=tenant,
        subject=approval_id,
        data={
            "approval_id": approval_id,
            "run_id": f"run-{approval_id}",
            "agent_name": "deployer",
            "action": "deploy to production",
            "risk_level": "high",
            "required_permission": permission,
            "expires_at": datetime.now(UTC) + expires_in,
        },
    )
    return approval_id


def decision(
    tenant: str,
    approval_id: str,
    *,
    verdict: str = "approve",
    decider: str = "ada",
    permissions: Sequence[str] = (PERMISSION,),
    time: datetime | None = None,
    subject: str | None = None,
) -> Envelope[Any]:
    """An ``approval.decision_submitted`` command (dated ``time`` if given; its
    subject, so its partition, is the approval's unless ``subject`` is given)."""
    command = build_event(
        CATALOG.get("approval.decision_submitted"),
        subject=subject or approval_id,
        tenant_id=tenant,
        data={
            "approval_id": approval_id,
            "decider": decider,
            "decider_permissions": list(permissions),
            "verdict": verdict,
            "comment": f"{decider} says {verdict}",
        },
        source="test",
    )
    return command if time is None else command.model_copy(update={"time": time})


async def wait_approval(
    pipeline: Pipeline, tenant: str, approval_id: str, status: str, timeout: float = 30.0
) -> Approval:
    """The approval once the projection shows it with ``status``."""
    found: list[Approval] = []

    async def reached() -> bool:
        approval = await get_approval(pipeline.pool, tenant, approval_id)
        found[:] = [approval] if approval is not None else []
        return approval is not None and approval.status == status

    await eventually(reached, timeout, interval=0.1)
    return found[0]


async def verdicts_by_approval(pipeline: Pipeline, tenant: str) -> dict[str, list[Envelope[Any]]]:
    """The tenant's archived verdicts (approved, denied, expired), per approval id."""
    grouped: dict[str, list[Envelope[Any]]] = defaultdict(list)
    for event in await pipeline.archived(tenant, *VERDICTS):
        grouped[event.data.approval_id].append(event)
    return dict(grouped)


async def wait_archived(
    pipeline: Pipeline, tenant: str, count: int, *types: str, timeout: float = 30.0
) -> list[Envelope[Any]]:
    """The tenant's archived events of ``types`` once there are at least ``count``."""
    found: list[Envelope[Any]] = []

    async def enough() -> bool:
        found[:] = await pipeline.archived(tenant, *types)
        return len(found) >= count

    await eventually(enough, timeout, interval=0.1)
    return found
