"""Agents as separate processes: a Developer → QA handoff chain with one approval,
surviving a SIGKILL of the QA process while it waits (issue 7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consumers.pricing import PricingTable
from ledgerbus.llm_stub import ServedStub, words
from streams.runs import RunsProjection, RunStatus, get_run
from tests.support.agents import (
    STUB_MODEL,
    decide,
    per_run,
    request_run,
    start_agent,
    wait_for,
    wait_registered,
)
from tests.support.archive import eventually
from tests.support.budgets import set_budget
from tests.support.gateway_deployment import caught_up
from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.timeout(300)


async def test_handoff_chain_with_approval_resumes_once_after_sigkill(
    pipeline: Pipeline, llm: ServedStub, tmp_path: Path
) -> None:
    tenant = pipeline.new_tenant()
    project = "checkout"
    await set_budget(pipeline, tenant, project, 5_000_000)
    developer = start_agent(pipeline, "developer", tenant, llm.url)
    qa = start_agent(pipeline, "qa-tester", tenant, llm.url)
    await asyncio.gather(developer.wait_ready(), qa.wait_ready())
    await wait_registered(pipeline, tenant, "developer", "qa-tester")
    calls_before = len(llm.stub.calls)

    run_id = await request_run(pipeline, tenant, "developer", project=project)

    [asked] = await wait_for(pipeline, tenant, "approval.requested")
    assert asked.data.agent_name == "qa-tester"
    qa_run = asked.data.run_id
    [handoff] = await wait_for(pipeline, tenant, "agent.handoff")
    assert handoff.data.run_id == run_id and handoff.data.handoff_run_id == qa_run
    assert b"Review and test" not in handoff.data.sealed.ciphertext, "handoff travels sealed"

    qa.kill()  # while the QA run waits for its approval
    replacement = start_agent(pipeline, "qa-tester", tenant, llm.url)
    await replacement.wait_ready()
    await decide(pipeline, tenant, asked.data.approval_id, "approve")

    completed = await wait_for(pipeline, tenant, "agent.completed", 2)
    assert per_run(completed) == {run_id: 1, qa_run: 1}, "each run completes exactly once"
    started = await pipeline.archived(tenant, "agent.started")
    assert per_run(started) == {run_id: 1, qa_run: 1}
    assert await pipeline.archived(tenant, "agent.failed") == []

    # One LLM call per run: the QA run's call before the approval is not repeated on resume.
    assert len(llm.stub.calls) - calls_before == 2
    costs = await pipeline.archived(tenant, "cost.recorded")
    assert per_run(costs) == {run_id: 1, qa_run: 1}
    price = PricingTable.default().price(STUB_MODEL)
    assert price is not None
    for cost in costs:
        assert cost.data.model == STUB_MODEL and cost.data.provider == "stub"
        assert cost.data.cost_micros == price.cost_micros(
            cost.data.input_tokens, cost.data.output_tokens
        )
        assert cost.data.output_tokens == words("done: 2 messages read")

    # One correlation for the whole chain (from the first request on), as the audit shows it.
    chain = [
        event
        for event in await pipeline.archived(tenant)
        if event.type.startswith(("agent.", "cost.")) or event.type == "approval.requested"
    ]
    [first] = [e for e in chain if e.type == "agent.run_requested" and e.data.run_id == run_id]
    rest = [e for e in chain if e.type not in ("agent.registered", "agent.heartbeat")]
    rest.remove(first)
    assert sorted(e.type for e in rest) == sorted(
        ["agent.run_accepted", "agent.started", "cost.recorded", "agent.completed"] * 2
        + ["agent.handoff", "agent.run_requested", "approval.requested"]
    )
    assert {event.correlation_id for event in rest} == {str(first.id)}
    qa_completed = next(event for event in completed if event.data.run_id == qa_run)
    assert qa_completed.data.instance_id != ""
    [approved] = await pipeline.archived(tenant, "approval.approved")
    waited = approved.time - asked.time
    assert qa_completed.data.duration_ms >= waited.total_seconds() * 1000, "from first start"

    # The runs projection (GET /v1/runs) tells the same story, from the archive.
    await eventually(
        lambda: caught_up(pipeline.pool, RunsProjection(), [tenant]), timeout=30, interval=0.2
    )
    developer_row = await get_run(pipeline.pool, tenant, run_id)
    qa_row = await get_run(pipeline.pool, tenant, qa_run)
    assert developer_row is not None and qa_row is not None
    assert developer_row.status == qa_row.status == RunStatus.COMPLETED
    assert (developer_row.parent_run_id, qa_row.parent_run_id) == (None, run_id)
    assert developer_row.correlation_id == qa_row.correlation_id == str(first.id)
    assert qa_row.duration_ms == qa_completed.data.duration_ms
    assert qa_row.started_at is not None and qa_row.started_at < approved.time
    cost_of = {cost.data.run_id: cost.data.cost_micros for cost in costs}
    assert (developer_row.cost_micros, qa_row.cost_micros) == (cost_of[run_id], cost_of[qa_run])
    assert developer_row.llm_calls == qa_row.llm_calls == 1
