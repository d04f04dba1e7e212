"""``ledgerbus agent run``: one agent as its own process on the bus.

Wires the agent runtime from settings: the agent's keyring under the data
dir, the key directory and replay guard in PostgreSQL, the run journal, the
LLM client, and a consumer in the agent's group. SIGTERM or SIGINT finishes
the batch in hand and leaves the group; runs still executing are released for
another process of the agent to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from prometheus_client import start_http_server

from consumers.agent import Agent
from consumers.agent_runtime import AgentRuntimeSettings, agent_consumer, build_runtime
from consumers.identity import AgentIdentity
from consumers.llm import LLMClient, LLMSettings
from ledgerbus.bus import connect, publishing
from ledgerbus.commands.database import migrated_pool
from ledgerbus.commands.service import stop_on_signals
from ledgerbus.settings import Settings
from producers.topics import ensure_topics
from schemas.models.enums import HpkeSuite

log = logging.getLogger("ledgerbus.agent")


@dataclass(frozen=True)
class AgentOptions:
    tenant_id: str
    metrics_host: str
    metrics_port: int
    suite: HpkeSuite
    heartbeat_seconds: float
    instance_id: str | None = None


def keyring_path(data_dir: Path, tenant_id: str, agent_name: str) -> Path:
    """Where an agent's private keys live (0600), one keyring per tenant and agent."""
    return data_dir / "agents" / tenant_id / f"{agent_name}.keys.json"


async def run_agent(settings: Settings, agent: Agent, options: AgentOptions) -> None:
    prefix = settings.topic_prefix
    llm_settings = LLMSettings()
    instance_id = options.instance_id or (
        f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(connect(settings))
        bootstrap = bus.endpoints.kafka_bootstrap
        await ensure_topics(bootstrap, prefix)
        pool = await stack.enter_async_context(migrated_pool(bus.endpoints.database_url, 8))
        publisher = await stack.enter_async_context(publishing(bus, f"agent/{agent.name}"))
        identity = AgentIdentity.load_or_create(
            keyring_path(settings.data_dir, options.tenant_id, agent.name),
            agent.name,
            options.suite,
        )
        runtime = build_runtime(
            agent,
            settings=AgentRuntimeSettings(
                tenant_id=options.tenant_id,
                instance_id=instance_id,
                heartbeat_seconds=options.heartbeat_seconds,
                # an explicit LEDGERBUS_LLM_MODEL wins over the agents' own models
                llm_model=(
                    llm_settings.model
                    if "model" in llm_settings.model_fields_set or agent.model is None
                    else None
                ),
            ),
            pool=pool,
            catalog=bus.catalog,
            deserializer=bus.deserializer(),
            publisher=publisher,
            identity=identity,
            llm=LLMClient.from_settings(llm_settings, publisher, source=f"agent/{agent.name}"),
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        stack.push_async_callback(producer.stop)
        consumer = agent_consumer(
            runtime, bootstrap, prefix, producer, round(settings.session_timeout * 1000)
        )
        await runtime.register()
        stop_on_signals(consumer.request_stop)
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        server, _ = start_http_server(options.metrics_port, addr=options.metrics_host)
        stack.callback(server.shutdown)
        log.info(
            "agent %s (tenant %s, key %s, instance %s) consuming as %s; "
            "metrics on http://%s:%d/metrics",
            agent.name,
            options.tenant_id,
            identity.key_id,
            instance_id,
            consumer.config.group_id,
            options.metrics_host,
            server.server_port,
        )
        heartbeats = asyncio.create_task(runtime.heartbeats())
        try:
            await consumer.run()
        finally:
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
