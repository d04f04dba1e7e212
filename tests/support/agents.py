"""Agent processes on a private pipeline, with a local OpenAI-compatible LLM stub.

The agents are real ``ledgerbus agent run`` child processes (so tests can
SIGKILL them); the LLM is the package's stub served over real HTTP by the test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaProducer

from consumers.agent import Agent
from consumers.agent_runtime import (
    AgentRuntime,
    AgentRuntimeSettings,
    agent_consumer,
    build_runtime,
)
from consumers.identity import AgentIdentity
from schemas.models import Envelope
from tests.support.archive import eventually
from tests.support.pipeline import CATALOG, Pipeline, Process

STUB_MODEL = "stub-model"


def start_agent(pipeline: Pipeline, name: str, tenant: str, llm_url: str, *args: str) -> Process:
    return pipeline.start(
        "agent",
        "run",
        name,
        "--tenant",
        tenant,
        "--heartbeat-seconds",
        "1",
        *args,
        extra_env={
            "LEDGERBUS_LLM_BASE_URL": llm_url,
            "LEDGERBUS_LLM_PROVIDER": "stub",
            "LEDGERBUS_LLM_MODEL": STUB_MODEL,
        },
    )


async def request_run(
    pipeline: Pipeline,
    tenant: str,
    agent: str,
    *,
    project: str,
    task: str = "add input validation to the signup form",
    estimate: int = 0,
    run_id: str | None = None,
) -> str:
    run_id = run_id or f"run-{uuid.uuid4().hex[:12]}"
    await pipeline.publish(
        "agent.run_requested",
        tenant_id=tenant,
        subject=run_id,
        data={
            "run_id": run_id,
            "project_id": project,
            "agent_name": agent,
            "task": task,
            "risk_level": "low",
            "cost_estimate_micros": estimate,
            "requested_by": "test",
        },
    )
    return run_id


async def decide(pipeline: Pipeline, tenant: str, approval_id: str, verdict: str) -> None:
    await pipeline.publish(
        "approval.decision_submitted",
        tenant_id=tenant,
        subject=approval_id,
        data={
            "approval_id": approval_id,
            "decider": "user:reviewer",
            "decider_permissions": ["approvals:approve"],
            "verdict": verdict,
        },
    )


async def wait_for(
    pipeline: Pipeline, tenant: str, event_type: str, count: int = 1, timeout: float = 60.0
) -> list[Envelope[Any]]:
    """The tenant's archived events of ``event_type``, once there are ``count``."""
    found: list[Envelope[Any]] = []

    async def enough() -> bool:
        found[:] = await pipeline.archived(tenant, event_type)
        return len(found) >= count

    await eventually(enough, timeout, interval=0.2)
    return found


async def wait_registered(pipeline: Pipeline, tenant: str, *agents: str) -> None:
    """Until the key directory projection lists every agent of ``agents``."""

    async def listed() -> bool:
        names = await pipeline.pool.fetch(
            "SELECT agent_name FROM agent_directory WHERE tenant_id = $1", tenant
        )
        return set(agents) <= {row["agent_name"] for row in names}

    await eventually(listed, 90, interval=0.2)


def per_run(events: list[Envelope[Any]]) -> Counter[str]:
    return Counter(event.data.run_id for event in events)


@asynccontextmanager
async def running_agent(
    pipeline: Pipeline, agent: Agent, identity: AgentIdentity, tenant: str
) -> AsyncIterator[AgentRuntime]:
    """``agent`` served by a runtime in this process (consuming until the block ends),
    registered in the key directory; no LLM."""
    settings = AgentRuntimeSettings(tenant_id=tenant, instance_id=f"test-{uuid.uuid4().hex[:6]}")
    runtime = build_runtime(
        agent,
        settings=settings,
        pool=pipeline.pool,
        catalog=CATALOG,
        deserializer=pipeline.deserializer,
        publisher=pipeline.publisher,
        identity=identity,
        llm=None,
    )
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.env["LEDGERBUS_KAFKA_BOOTSTRAP"])
    await producer.start()
    consumer = agent_consumer(
        runtime, pipeline.env["LEDGERBUS_KAFKA_BOOTSTRAP"], pipeline.topic_prefix, producer
    )
    await consumer.start()
    running = asyncio.create_task(consumer.run())
    try:
        await runtime.register()
        await wait_registered(pipeline, tenant, agent.name)
        yield runtime
    finally:
        consumer.request_stop()
        await running
        await consumer.stop()
        await producer.stop()
