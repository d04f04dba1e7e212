"""The key directory's read side over the real projection, and sealed messages through it.

Registrations are archived and projected by the real ``agent_directory``
projection on the test's own PostgreSQL database; lookups, the cache, and
opening boxes (with the real replay guard) read what it wrote.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from consumers.identity import AgentIdentity
from consumers.key_directory import KeyDirectory, KeyState, agent_key, current_key
from consumers.replay_guard import ReplayGuard
from consumers.sealing import Opener, Rejected, RejectionReason, seal
from schemas.models.enums import HpkeSuite
from schemas.registry_client import RegistryClient
from tests.conftest import Isolation
from tests.support.sealing import GRACE, project, registered

HYBRID = HpkeSuite.MLKEM768X25519_SHA256_CHACHA20POLY1305


@dataclasses.dataclass
class Agents:
    """Two agents with keyrings on disk, and a way to publish their keys."""

    tenant: str
    dev: AgentIdentity
    qa: AgentIdentity
    pool: asyncpg.Pool
    registry: RegistryClient

    async def register(
        self, identity: AgentIdentity, *, revoked_key_ids: tuple[str, ...] = ()
    ) -> None:
        event = registered(
            identity, self.tenant, datetime.now(UTC), revoked_key_ids=revoked_key_ids
        )
        await project(self.pool, self.registry, [event])


@pytest.fixture
async def agents(
    tmp_path: Path, isolation: Isolation, db_pool: asyncpg.Pool, registry: RegistryClient
) -> Agents:
    found = Agents(
        isolation.tenant_id,
        AgentIdentity.load_or_create(tmp_path / "dev.json", "dev"),
        AgentIdentity.load_or_create(tmp_path / "qa.json", "qa", HYBRID),
        db_pool,
        registry,
    )
    await found.register(found.dev)
    await found.register(found.qa)
    return found


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def carried_by(tenant_id: str, message_id: str) -> dict[str, Any]:
    """The envelope fields of the ``agent.message`` event ``message_id``, as seal/open take them."""
    return {
        "tenant_id": tenant_id,
        "message_id": message_id,
        "purpose": "agent.message",
        "correlation_id": "corr-1",
    }


async def test_lookups_return_the_registered_keys(agents: Agents) -> None:
    for identity in (agents.dev, agents.qa):
        data = identity.registration(GRACE)
        key = await current_key(agents.pool, agents.tenant, identity.agent_name)
        assert key is not None
        assert (key.agent_name, key.key_id, key.suite) == (
            identity.agent_name,
            identity.key_id,
            identity.suite.value,
        )
        assert (key.signing_public_key, key.hpke_public_key) == (
            data["signing_public_key"],
            data["hpke_public_key"],
        )
        assert (key.retired_at, key.revoked_at) == (None, None)
        assert key == await agent_key(agents.pool, agents.tenant, identity.agent_name, key.key_id)
    assert await current_key(agents.pool, agents.tenant, "nobody") is None
    assert await current_key(agents.pool, "another-tenant", "dev") is None
    assert await agent_key(agents.pool, agents.tenant, "dev", "k_unknown") is None
    assert await agent_key(agents.pool, agents.tenant, "qa", agents.dev.key_id) is None


async def test_rotation_and_revocation_show_in_the_directory(agents: Agents) -> None:
    old = agents.qa.key_id
    agents.qa.rotate()
    await agents.register(agents.qa)
    now = datetime.now(UTC)
    new = await current_key(agents.pool, agents.tenant, "qa")
    previous = await agent_key(agents.pool, agents.tenant, "qa", old)
    assert new is not None and previous is not None
    assert new.key_id == agents.qa.key_id != old
    assert previous.retired_at == agents.qa.registration(GRACE)["previous_key_valid_until"]
    assert previous.state(new.key_id, now) == KeyState.GRACE
    assert previous.state(new.key_id, now + GRACE) == KeyState.RETIRED

    await agents.register(agents.qa, revoked_key_ids=(old,))
    revoked = await agent_key(agents.pool, agents.tenant, "qa", old)
    assert revoked is not None and revoked.revoked_at is not None
    assert revoked.state(new.key_id, now) == KeyState.REVOKED


async def test_the_cache_answers_until_its_ttl_or_forget(agents: Agents) -> None:
    clock = Clock()
    directory = KeyDirectory(agents.pool, ttl=2.0, clock=clock)
    first = await directory.current_key(agents.tenant, "qa")
    assert first is not None and first.key_id == agents.qa.key_id
    assert await directory.current_key(agents.tenant, "ops") is None

    agents.qa.rotate()
    await agents.register(agents.qa)
    ops = AgentIdentity.load_or_create(agents.qa.path.with_name("ops.json"), "ops")
    await agents.register(ops)
    clock.now = 1.9
    assert await directory.current_key(agents.tenant, "qa") == first
    assert await directory.current_key(agents.tenant, "ops") is None  # a miss is kept too

    directory.forget(agents.tenant, "qa")
    rotated = await directory.current_key(agents.tenant, "qa")
    assert rotated is not None and rotated.key_id == agents.qa.key_id != first.key_id
    assert await directory.current_key(agents.tenant, "ops") is None  # only qa was forgotten
    clock.now = 2.0
    found = await directory.current_key(agents.tenant, "ops")
    assert found is not None and found.key_id == ops.key_id


async def test_forget_drops_signing_keys_too(agents: Agents) -> None:
    directory = KeyDirectory(agents.pool, ttl=3600)
    old = agents.dev.key_id
    before = await directory.signing_key(agents.tenant, "dev", old)
    assert before is not None and before.revoked_at is None
    agents.dev.rotate()
    await agents.register(agents.dev, revoked_key_ids=(old,))
    assert await directory.signing_key(agents.tenant, "dev", old) == before
    directory.forget(agents.tenant, "dev")
    after = await directory.signing_key(agents.tenant, "dev", old)
    assert after is not None and after.revoked_at is not None


async def test_the_cache_drops_its_oldest_answers_beyond_max_entries(agents: Agents) -> None:
    directory = KeyDirectory(agents.pool, ttl=3600, max_entries=2)
    old = agents.dev.key_id
    assert await directory.signing_key(agents.tenant, "dev", old) is not None
    agents.dev.rotate()
    await agents.register(agents.dev, revoked_key_ids=(old,))
    cached = await directory.signing_key(agents.tenant, "dev", old)
    assert cached is not None and cached.revoked_at is None  # still the cached answer
    await directory.current_key(agents.tenant, "qa")
    await directory.signing_key(agents.tenant, "dev", "k_made_up")  # pushes the first out
    reread = await directory.signing_key(agents.tenant, "dev", old)
    assert reread is not None and reread.revoked_at is not None


async def test_boxes_open_through_the_real_directory_and_replay_guard(agents: Agents) -> None:
    directory = KeyDirectory(agents.pool)
    opener = Opener(agents.qa, directory, ReplayGuard(agents.pool))
    recipient = await directory.current_key(agents.tenant, "qa")
    assert recipient is not None
    envelope = carried_by(agents.tenant, "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    box = seal(
        b"run the smoke tests",
        identity=agents.dev,
        recipient=recipient,
        sealed_at=datetime.now(UTC),
        **envelope,
    )
    assert box.suite == HYBRID
    at = ("agent-messages", 0, 17)
    assert await opener.open(box, position=at, **envelope) == b"run the smoke tests"
    assert await opener.open(box, position=at, **envelope) == b"run the smoke tests"
    with pytest.raises(Rejected) as caught:
        await opener.open(box, position=("agent-messages", 0, 18), **envelope)
    assert caught.value.reason == RejectionReason.REPLAYED


async def test_a_revoked_sender_key_is_refused_once_the_cache_forgets(agents: Agents) -> None:
    directory = KeyDirectory(agents.pool, ttl=3600)
    opener = Opener(agents.qa, directory, ReplayGuard(agents.pool))
    recipient = await directory.current_key(agents.tenant, "qa")
    assert recipient is not None
    envelope = carried_by(agents.tenant, "m-1")
    box = seal(
        b"deploy", identity=agents.dev, recipient=recipient, sealed_at=datetime.now(UTC), **envelope
    )
    await directory.signing_key(agents.tenant, "dev", agents.dev.key_id)  # cached, unrevoked
    old = agents.dev.key_id
    agents.dev.rotate()
    await agents.register(agents.dev, revoked_key_ids=(old,))
    directory.forget(agents.tenant, "dev")
    with pytest.raises(Rejected) as caught:
        await opener.open(box, position=("agent-messages", 1, 1), **envelope)
    assert caught.value.reason == RejectionReason.REVOKED_KEY

    envelope = carried_by(agents.tenant, "m-2")
    fresh = seal(
        b"deploy", identity=agents.dev, recipient=recipient, sealed_at=datetime.now(UTC), **envelope
    )
    assert fresh.sender_key_id == agents.dev.key_id != old
    assert await opener.open(fresh, position=("agent-messages", 1, 2), **envelope) == b"deploy"
