"""The agent SDK's contract with agent code: middleware around every execution,
subscriptions, failures and timeouts reported as ``agent.failed``, denials (issue 7)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from consumers.agent import Agent, AgentResult, AgentTask, Middleware, on
from consumers.identity import AgentIdentity
from schemas.models import Envelope
from tests.support.agents import decide, request_run, running_agent, wait_for
from tests.support.archive import eventually
from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.timeout(240)


class Journal(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    async def before_execute(self, agent: Agent, task: AgentTask) -> None:
        self.seen.append(("before", task.task, None))

    async def after_execute(
        self, agent: Agent, task: AgentTask, result: AgentResult | None, error: BaseException | None
    ) -> None:
        outcome = result.output if result is not None else type(error).__name__
        self.seen.append(("after", task.task, outcome))


class Worker(Agent):
    """Does what the task says: succeed, fail, hang, or ask for approval first."""

    timeout = 1.0

    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name)
        self.middleware = [journal]
        self.effects = 0
        self.budgets: list[Envelope[Any]] = []

    async def handle(self, task: AgentTask) -> AgentResult:
        if task.task == "fail":
            raise ValueError("the linter found 3 errors")
        if task.task == "hang":
            await asyncio.sleep(30)
        if task.task == "approve first":
            await self.step("side effect", self._effect)
            await self.request_approval(action="drop the table", risk="critical")
        return AgentResult(output=f"did {task.task}")

    async def _effect(self) -> int:
        self.effects += 1
        return self.effects

    @on("budget.set")
    async def budget_changed(self, event: Envelope[Any]) -> None:
        self.budgets.append(event)


async def test_middleware_failures_timeouts_denials_and_subscriptions(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    tenant = pipeline.new_tenant()
    journal = Journal()
    worker = Worker("worker", journal)
    identity = AgentIdentity.load_or_create(tmp_path / "worker.json", "worker")
    async with running_agent(pipeline, worker, identity, tenant):
        ok = await request_run(pipeline, tenant, "worker", project="p", task="ok")
        failing = await request_run(pipeline, tenant, "worker", project="p", task="fail")
        hanging = await request_run(pipeline, tenant, "worker", project="p", task="hang")
        denied = await request_run(pipeline, tenant, "worker", project="p", task="approve first")
        [asked] = await wait_for(pipeline, tenant, "approval.requested")
        await decide(pipeline, tenant, asked.data.approval_id, "deny")
        await pipeline.publish(
            "budget.set",
            tenant_id=tenant,
            subject="p",
            data={"project_id": "p", "amount_micros": 5_000_000},
        )
        await pipeline.publish(  # another tenant's event is not this agent's business
            "budget.set",
            tenant_id=pipeline.new_tenant(),
            subject="p",
            data={"project_id": "p", "amount_micros": 1},
        )

        failed = await wait_for(pipeline, tenant, "agent.failed", 3)
        completed = await wait_for(pipeline, tenant, "agent.completed", 1)
        await eventually(lambda: len(worker.budgets) == 1, 30)

    assert [event.data.run_id for event in completed] == [ok]
    assert completed[0].data.result == "did ok"
    reasons = {event.data.run_id: event.data for event in failed}
    assert reasons[failing].reason == "error"
    assert reasons[failing].error_class == "ValueError"
    assert reasons[failing].error_message == "the linter found 3 errors"
    assert reasons[hanging].reason == "timeout"
    assert reasons[denied].reason == "approval_denied"
    assert worker.effects == 1, "the step before the approval ran once"
    assert worker.budgets[0].data.amount_micros == 5_000_000

    assert sorted(journal.seen) == sorted(
        [
            ("before", "ok", None),
            ("after", "ok", "did ok"),
            ("before", "fail", None),
            ("after", "fail", "ValueError"),
            ("before", "hang", None),
            ("after", "hang", "TimeoutError"),
            ("before", "approve first", None),  # suspended: no after until it ends
        ]
    )
