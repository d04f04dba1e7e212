"""Guarantee 6 in the consumer runtime: a tampered, replayed, misaddressed, stale or
unsigned agent message is dead-lettered with its reason and never reaches agent code."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consumers.agent import Agent, AgentResult, AgentTask, Message, on
from consumers.agent_runtime import AgentRuntimeSettings, build_runtime
from consumers.identity import AgentIdentity
from consumers.key_directory import AgentKey, KeyDirectory
from consumers.sealing import seal
from producers.publisher import build_event
from schemas.models import Envelope
from schemas.models.agent import SealedBox
from tests.support.agents import running_agent, wait_registered
from tests.support.archive import eventually
from tests.support.budgets import header, of_tenant, topic_records
from tests.support.pipeline import CATALOG, Pipeline
from tests.support.sealing import registered

pytestmark = pytest.mark.timeout(240)


class Inbox(Agent):
    """Records every message the runtime hands it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.opened: list[dict[str, Any]] = []

    async def handle(self, task: AgentTask) -> AgentResult:
        raise AssertionError("no runs in this test")

    @on("agent.message")
    async def received(self, message: Message) -> None:
        self.opened.append({"from": message.sender, **message.payload})


def message(
    tenant: str,
    payload: dict[str, Any],
    *,
    sender: AgentIdentity,
    to: AgentKey,
    at: datetime | None = None,
) -> Envelope[Any]:
    """An ``agent.message`` to agent "receiver", sealed and signed as a sender would."""
    event_id, at = uuid.uuid4(), at or datetime.now(UTC)
    box = seal(
        json.dumps(payload).encode(),
        identity=sender,
        recipient=to,
        tenant_id=tenant,
        message_id=event_id,
        purpose="agent.message",
        correlation_id="chain-1",
        sealed_at=at,
    )
    return build_event(
        CATALOG.get("agent.message"),
        subject="receiver",
        tenant_id=tenant,
        data={"sealed": box},
        source="test",
        correlation_id="chain-1",
        event_id=event_id,
        time=at,
    )


def with_box(event: Envelope[Any], **changes: Any) -> Envelope[Any]:
    """``event`` with its box's fields changed after signing (no validation: forgeries)."""
    box = event.data.sealed.model_copy(update=changes)
    return event.model_copy(update={"data": event.data.model_copy(update={"sealed": box})})


def flipped(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


async def test_forged_messages_are_dead_lettered_with_their_reason(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    tenant = pipeline.new_tenant()
    now = datetime.now(UTC)
    receiver = AgentIdentity.load_or_create(tmp_path / "receiver.json", "receiver")
    sender, intruder, bystander, leaver = (
        AgentIdentity.load_or_create(tmp_path / f"{name}.json", name)
        for name in ("sender", "intruder", "bystander", "leaver")
    )
    for identity in (sender, intruder, bystander, leaver):
        await pipeline.publisher.publish(registered(identity, tenant, now))
    inbox = Inbox("receiver")
    async with running_agent(pipeline, inbox, receiver, tenant) as runtime:
        await wait_registered(pipeline, tenant, "sender", "intruder", "bystander", "leaver")
        directory = KeyDirectory(pipeline.pool)
        to_receiver = await directory.current_key(tenant, "receiver")
        to_bystander = await directory.current_key(tenant, "bystander")
        assert to_receiver is not None and to_bystander is not None

        def from_sender(n: str, **kw: Any) -> Envelope[Any]:
            return message(tenant, {"n": n}, sender=sender, to=to_receiver, **kw)

        valid = from_sender("valid")
        impostor = message(tenant, {"n": "impostor"}, sender=intruder, to=to_receiver)
        unsigned = with_box(from_sender("unsigned"))
        unsigned.data.sealed.__dict__["signature"] = b""  # what a foreign producer could send
        forgeries = {
            "bad_signature": with_box(
                from_sender("tampered"), ciphertext=flipped(valid.data.sealed.ciphertext)
            ),
            # envelope fields: the correlation is signed, the time must equal the sealed one
            "bad_signature/correlation": from_sender("re-correlated").model_copy(
                update={"correlation_id": "chain-2"}
            ),
            "envelope_mismatch": from_sender("re-dated").model_copy(
                update={"time": now - timedelta(seconds=1)}
            ),
            "wrong_recipient": message(
                tenant, {"n": "misaddressed"}, sender=sender, to=to_bystander
            ),
            "unknown_key": with_box(from_sender("unknown key"), sender_key_id="k_0000000000000000"),
            "stale": from_sender("old", at=datetime.now(UTC) - timedelta(hours=1)),
            "bad_signature/impostor": with_box(
                impostor, sender="sender", sender_key_id=sender.key_id
            ),
            "schema_violation": unsigned,
        }
        await pipeline.publisher.publish(valid)
        for forgery in forgeries.values():
            await pipeline.publisher.publish(forgery)
        await pipeline.publisher.publish(valid)  # the same event id again: a replay

        # A rotated key still opens what was sealed to it during the grace period.
        in_flight = message(tenant, {"n": "sealed before rotation"}, sender=sender, to=to_receiver)
        runtime.identity.rotate()
        await runtime.register()
        await pipeline.publisher.publish(in_flight)

        # A revoked sender's messages are refused once the directory says so.
        await pipeline.publisher.publish(
            registered(leaver, tenant, datetime.now(UTC), revoked_key_ids=[leaver.key_id])
        )

        async def revoked() -> bool:
            return bool(
                await pipeline.pool.fetchval(
                    "SELECT revoked_at IS NOT NULL FROM agent_keys WHERE tenant_id = $1 "
                    "AND agent_name = 'leaver'",
                    tenant,
                )
            )

        await eventually(revoked, 60, interval=0.2)
        await asyncio.sleep(2.5)  # the runtime's directory cache forgets within 2 s
        receiver_key = await KeyDirectory(pipeline.pool).signing_key(
            tenant, "receiver", to_receiver.key_id
        )
        assert receiver_key is not None
        await pipeline.publisher.publish(
            message(tenant, {"n": "from a revoked key"}, sender=leaver, to=receiver_key)
        )

        expected = Counter([*(name.split("/")[0] for name in forgeries), "replayed", "revoked_key"])
        dead: dict[bytes, str] = {}  # by original bytes: a redelivery may dead-letter twice

        async def all_dead_lettered() -> bool:
            records = of_tenant(
                await topic_records(pipeline, "agent-messages", dead_letters=True), tenant
            )
            for record in records:
                reason = header(record, "ledgerbus-dlq-reason") or b""
                dead[record.value + reason] = reason.decode()
            return set(expected) <= set(dead.values())

        await eventually(all_dead_lettered, 60, interval=0.5)
        assert Counter(dead.values()) == expected
        assert inbox.opened == [
            {"from": "sender", "n": "valid"},
            {"from": "sender", "n": "sealed before rotation"},
        ], "agent code sees only the messages that passed every check"
        assert isinstance(valid.data.sealed, SealedBox)


async def test_message_ids_too_old_to_replay_are_forgotten(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Ids older than twice the task window (48 h) go; a replay of one is stale anyway."""
    tenant = pipeline.new_tenant()
    runtime = build_runtime(
        Inbox("receiver"),
        settings=AgentRuntimeSettings(tenant_id=tenant, instance_id="purge-test"),
        pool=pipeline.pool,
        catalog=CATALOG,
        deserializer=pipeline.deserializer,
        publisher=pipeline.publisher,
        identity=AgentIdentity.load_or_create(tmp_path / "receiver.json", "receiver"),
        llm=None,
    )
    ages = [timedelta(hours=49), timedelta(hours=47), timedelta(0)]
    for n, age in enumerate(ages):
        assert await runtime.replay_guard.first_sighting(tenant, "receiver", f"m-{n}", ("t", 0, n))
        await pipeline.pool.execute(
            "UPDATE agent_messages_seen SET seen_at = now() - $2::interval "
            "WHERE tenant_id = $1 AND message_id = $3",
            tenant,
            age,
            f"m-{n}",
        )
    assert await runtime.forget_old_messages() == 1
    kept = await pipeline.pool.fetch(
        "SELECT message_id FROM agent_messages_seen WHERE tenant_id = $1 ORDER BY 1", tenant
    )
    assert [row["message_id"] for row in kept] == ["m-1", "m-2"]

    # the heartbeat loop purges too, at start and every purge_interval
    assert await runtime.replay_guard.first_sighting(tenant, "receiver", "m-3", ("t", 0, 3))
    await pipeline.pool.execute(
        "UPDATE agent_messages_seen SET seen_at = now() - interval '49 hours' "
        "WHERE tenant_id = $1 AND message_id = 'm-3'",
        tenant,
    )
    beating = asyncio.create_task(runtime.heartbeats())
    try:

        async def purged() -> bool:
            return not await pipeline.pool.fetchval(
                "SELECT count(*) FROM agent_messages_seen WHERE tenant_id = $1 "
                "AND message_id = 'm-3'",
                tenant,
            )

        await eventually(purged, timeout=10)
    finally:
        beating.cancel()
