"""Agent processes sharing work, and the budget check in front of them (issue 7)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from ledgerbus.llm_stub import ServedStub
from tests.support.agents import per_run, request_run, start_agent, wait_for, wait_registered
from tests.support.archive import eventually
from tests.support.budgets import set_budget
from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.timeout(300)


async def test_two_processes_of_one_agent_split_runs_each_executed_once(
    pipeline: Pipeline, llm: ServedStub
) -> None:
    tenant = pipeline.new_tenant()
    workers = [start_agent(pipeline, "ux-designer", tenant, llm.url) for _ in range(2)]
    await asyncio.gather(*(worker.wait_ready() for worker in workers))
    await wait_registered(pipeline, tenant, "ux-designer")

    async def both_heartbeating() -> bool:
        count = await pipeline.pool.fetchval(
            "SELECT count(*) FROM agent_instances WHERE tenant_id = $1", tenant
        )
        return bool(count == 2)

    await eventually(both_heartbeating, 60, interval=0.2)
    await asyncio.sleep(8)  # let the group settle on two members before the work arrives
    calls_before = len(llm.stub.calls)
    runs = [
        await request_run(pipeline, tenant, "ux-designer", project="site", task=f"page {n}")
        for n in range(100)
    ]

    completed = await wait_for(pipeline, tenant, "agent.completed", 100, timeout=180)
    assert per_run(completed) == dict.fromkeys(runs, 1), "every run completed exactly once"
    assert per_run(await pipeline.archived(tenant, "agent.started")) == dict.fromkeys(runs, 1)
    assert len(llm.stub.calls) - calls_before == 100, "no run executed twice"
    by_instance = Counter(event.data.instance_id for event in completed)
    assert len(by_instance) == 2 and min(by_instance.values()) > 0, by_instance


async def test_a_run_over_budget_is_rejected_before_the_agent_starts(
    pipeline: Pipeline, llm: ServedStub
) -> None:
    tenant = pipeline.new_tenant()
    worker = start_agent(pipeline, "security-auditor", tenant, llm.url)
    await worker.wait_ready()
    await set_budget(pipeline, tenant, "tiny", 1_000)
    calls_before = len(llm.stub.calls)
    allowed = await request_run(pipeline, tenant, "security-auditor", project="tiny", estimate=10)
    refused = await request_run(
        pipeline, tenant, "security-auditor", project="tiny", estimate=5_000
    )

    [rejected] = await wait_for(pipeline, tenant, "agent.run_rejected")
    assert rejected.data.run_id == refused and rejected.data.reason == "budget_exceeded"
    [done] = await wait_for(pipeline, tenant, "agent.completed")
    assert done.data.run_id == allowed
    started = await pipeline.archived(tenant, "agent.started")
    assert [event.data.run_id for event in started] == [allowed]
    assert len(llm.stub.calls) - calls_before == 1, "the refused run never reached the LLM"
    costs = await pipeline.archived(tenant, "cost.recorded")
    assert [cost.data.run_id for cost in costs] == [allowed]
