"""Audit verification against real PostgreSQL: tampering, checkpoints, and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from event_store.audit import NoEvents, Reason, Verification, tenants, verify_chain
from event_store.chain import link
from event_store.checkpoints import (
    KEY_FILE,
    Checkpoint,
    CheckpointKeys,
    Signer,
    checkpoint_decoder,
    load_or_create_key,
)
from event_store.store import EventStore
from schemas.catalog import default_catalog
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from streams.checkpoints import checkpoint_event
from tests.conftest import Isolation
from tests.support.archived import archive
from tests.support.cli import run_cli
from tests.support.events import new_event

CATALOG = default_catalog()
LENGTH = 20


@pytest.fixture
async def chain(event_store: EventStore) -> EventStore:
    """Tenant ``acme`` with a 20-event chain."""
    await event_store.append([new_event("acme", n) for n in range(LENGTH)])
    return event_store


async def verify(store: EventStore, keys: CheckpointKeys | None = None) -> Verification:
    return await verify_chain(store.pool, "acme", checkpoints=keys, fetch_size=7)


def assert_fails(result: Verification, position: int, reason: Reason) -> None:
    assert result.failure is not None, result
    assert (result.failure.position, result.failure.reason) == (position, reason), result.failure
    assert result.length == position - 1


async def test_honest_chain_verifies_whatever_the_batch_size(chain: EventStore) -> None:
    head = await chain.head("acme")
    for fetch_size in (1, 7, 20, 1000):
        result = await verify_chain(chain.pool, "acme", fetch_size=fetch_size)
        assert result.ok, result.failure
        assert (result.length, result.head) == (LENGTH, head.hash)


async def test_progress_is_reported_per_batch(chain: EventStore) -> None:
    seen: list[int] = []
    await verify_chain(chain.pool, "acme", progress=seen.append, fetch_size=7)
    assert seen == [7, 7, 6]


async def test_changed_byte_in_a_body(chain: EventStore) -> None:
    await chain.pool.execute(
        "UPDATE events SET body = set_byte(body, 10, (get_byte(body, 10) + 1) % 256) "
        "WHERE position = 7"
    )
    assert_fails(await verify(chain), 7, Reason.CHANGED_BYTES)


async def test_changed_byte_in_the_last_body(chain: EventStore) -> None:
    await chain.pool.execute(
        f"UPDATE events SET body = body || '\\x00'::bytea WHERE position = {LENGTH}"
    )
    assert_fails(await verify(chain), LENGTH, Reason.CHANGED_BYTES)


async def test_deleted_row(chain: EventStore) -> None:
    await chain.pool.execute("DELETE FROM events WHERE position = 7")
    result = await verify(chain)
    assert_fails(result, 7, Reason.MISSING_POSITION)
    assert result.failure is not None
    assert "position 6 is followed at position 8" in result.failure.detail


async def test_deleted_first_and_last_rows(chain: EventStore) -> None:
    await chain.pool.execute(f"DELETE FROM events WHERE position = {LENGTH}")
    assert_fails(await verify(chain), LENGTH, Reason.MISSING_POSITION)
    await chain.pool.execute("DELETE FROM events WHERE position = 1")
    assert_fails(await verify(chain), 1, Reason.MISSING_POSITION)


async def test_swapped_rows(chain: EventStore) -> None:
    await swap(chain.pool, 7, 8)
    result = await verify(chain)
    assert_fails(result, 7, Reason.REORDERED)
    assert result.failure is not None
    assert "now at position 8" in result.failure.detail


async def test_rows_moved_far_apart_or_to_the_start(chain: EventStore) -> None:
    await swap(chain.pool, 1, 15)
    assert_fails(await verify(chain), 1, Reason.REORDERED)


async def test_edited_hash_column(chain: EventStore) -> None:
    await chain.pool.execute(
        "UPDATE events SET hash = $1 WHERE position = 7", hashlib.sha256(b"x").digest()
    )
    assert_fails(await verify(chain), 7, Reason.HASH_MISMATCH)


async def test_edited_prev_hash_column(chain: EventStore) -> None:
    await chain.pool.execute("UPDATE events SET prev_hash = $1 WHERE position = 7", bytes(32))
    assert_fails(await verify(chain), 7, Reason.BROKEN_LINK)


async def test_row_removed_and_the_rest_renumbered(chain: EventStore) -> None:
    await chain.pool.execute("DELETE FROM events WHERE position = 7")
    await chain.pool.execute("UPDATE events SET position = position - 1 WHERE position > 7")
    await chain.pool.execute("UPDATE chain_heads SET position = position - 1")
    assert_fails(await verify(chain), 7, Reason.BROKEN_LINK)


async def test_chain_head_disagreeing_with_the_rows(chain: EventStore) -> None:
    await chain.pool.execute("UPDATE chain_heads SET hash = $1", bytes(32))
    result = await verify(chain)
    assert result.failure is not None
    assert (result.failure.position, result.failure.reason) == (LENGTH, Reason.HEAD_MISMATCH)
    await chain.pool.execute("DELETE FROM chain_heads")
    result = await verify(chain)
    assert result.failure is not None
    assert result.failure.reason == Reason.HEAD_MISMATCH
    assert "no chain head row" in result.failure.detail


async def test_tenants_include_chains_whose_head_row_is_gone(chain: EventStore) -> None:
    await chain.append([new_event("globex", n) for n in range(3)])
    await chain.pool.execute("DELETE FROM chain_heads WHERE tenant_id = 'globex'")
    assert await tenants(chain.pool) == ["acme", "globex"]
    assert (await verify(chain)).ok  # one tenant's damage is not another's


async def test_tenant_without_events(event_store: EventStore) -> None:
    with pytest.raises(NoEvents, match="no events for tenant 'nobody'"):
        await verify_chain(event_store.pool, "nobody")


# ------------------------------------------------------------------ checkpoints


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def keys(registry: RegistryClient, signer: Signer) -> CheckpointKeys:
    decode = checkpoint_decoder(EventDeserializer(CATALOG, registry))
    return CheckpointKeys(decode, {signer.key_id: signer.public_key})


async def checkpointed_chain(
    store: EventStore, registry: RegistryClient, signer: Signer, tenant: str = "acme"
) -> Checkpoint:
    """Ten events, a checkpoint of position 10 at position 11, five more events."""
    await store.append([new_event(tenant, n) for n in range(10)])
    head = await store.head(tenant)
    checkpoint = signer.sign(tenant, head.position, head.hash)
    await add_checkpoint(store, registry, checkpoint)
    await store.append([new_event(tenant, n) for n in range(10, 15)])
    return checkpoint


async def add_checkpoint(
    store: EventStore, registry: RegistryClient, checkpoint: Checkpoint
) -> None:
    serializer = EventSerializer(CATALOG, registry)
    await archive(store, serializer, [checkpoint_event(checkpoint, "test")])


async def test_checkpoints_are_verified(
    event_store: EventStore, registry: RegistryClient, signer: Signer, keys: CheckpointKeys
) -> None:
    await checkpointed_chain(event_store, registry, signer)
    result = await verify(event_store, keys)
    assert result.ok, result.failure
    assert (result.length, result.checkpoints) == (16, 1)


async def test_forged_checkpoint_signature(
    event_store: EventStore, registry: RegistryClient, signer: Signer, keys: CheckpointKeys
) -> None:
    await event_store.append([new_event("acme", n) for n in range(10)])
    head = await event_store.head("acme")
    impostor = Signer(Ed25519PrivateKey.generate())
    forged = dataclasses.replace(
        impostor.sign("acme", head.position, head.hash), key_id=signer.key_id
    )
    await add_checkpoint(event_store, registry, forged)
    assert_fails(await verify(event_store, keys), 11, Reason.BAD_CHECKPOINT_SIGNATURE)
    assert (await verify(event_store)).ok  # the hash chain itself is intact


async def test_checkpoint_copied_from_another_tenant(
    event_store: EventStore, registry: RegistryClient, signer: Signer, keys: CheckpointKeys
) -> None:
    globex = await checkpointed_chain(event_store, registry, signer, tenant="globex")
    await event_store.append([new_event("acme", n) for n in range(10)])
    await add_checkpoint(event_store, registry, dataclasses.replace(globex, tenant_id="acme"))
    assert_fails(await verify(event_store, keys), 11, Reason.BAD_CHECKPOINT_SIGNATURE)


async def test_checkpoint_by_an_unknown_key(
    event_store: EventStore, registry: RegistryClient, signer: Signer, keys: CheckpointKeys
) -> None:
    await checkpointed_chain(event_store, registry, signer)
    strangers = dataclasses.replace(keys, public_keys={})
    assert_fails(await verify(event_store, strangers), 11, Reason.UNKNOWN_CHECKPOINT_KEY)


async def test_chain_rewritten_before_a_checkpoint(
    event_store: EventStore, registry: RegistryClient, signer: Signer, keys: CheckpointKeys
) -> None:
    await checkpointed_chain(event_store, registry, signer)
    await rewrite(event_store.pool, "acme", position=4, body=b"a different history")
    assert (await verify(event_store)).ok  # a consistent rewrite fools the bare chain...
    assert_fails(await verify(event_store, keys), 11, Reason.CHECKPOINT_MISMATCH)  # ...not this


async def test_checkpoint_claiming_a_later_position(
    event_store: EventStore, registry: RegistryClient, signer: Signer, keys: CheckpointKeys
) -> None:
    await event_store.append([new_event("acme", n) for n in range(10)])
    await add_checkpoint(event_store, registry, signer.sign("acme", 11, bytes(32)))
    assert_fails(await verify(event_store, keys), 11, Reason.CHECKPOINT_MISMATCH)


async def test_undecodable_checkpoint_row(
    event_store: EventStore, registry: RegistryClient, signer: Signer, keys: CheckpointKeys
) -> None:
    await event_store.append([new_event("acme", n, type="audit.checkpoint") for n in range(2)])
    assert_fails(await verify(event_store, keys), 1, Reason.UNDECODABLE_CHECKPOINT)


async def swap(pool: asyncpg.Pool, a: int, b: int) -> None:
    """Swap two rows' positions (in three steps: the primary key is checked per row)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE events SET position = 1000000 WHERE position = $1", a)
        await conn.execute("UPDATE events SET position = $1 WHERE position = $2", a, b)
        await conn.execute("UPDATE events SET position = $1 WHERE position = 1000000", b)


async def rewrite(pool: asyncpg.Pool, tenant: str, position: int, body: bytes) -> None:
    """What an attacker with database access does: replace a body, re-chain everything after."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE events SET body = $3 WHERE tenant_id = $1 AND position = $2",
            tenant,
            position,
            body,
        )
        rows = await conn.fetch(
            "SELECT position, body, prev_hash FROM events "
            "WHERE tenant_id = $1 AND position >= $2 ORDER BY position",
            tenant,
            position,
        )
        prev = rows[0]["prev_hash"]
        for row in rows:
            digest = link(prev, row["body"])
            await conn.execute(
                "UPDATE events SET prev_hash = $3, hash = $4 "
                "WHERE tenant_id = $1 AND position = $2",
                tenant,
                row["position"],
                prev,
                digest,
            )
            prev = digest
        await conn.execute("UPDATE chain_heads SET hash = $2 WHERE tenant_id = $1", tenant, prev)


# ------------------------------------------------------------------ the command line


@pytest.fixture
def audit_env(cli_env: dict[str, str], isolation: Isolation) -> dict[str, str]:
    return {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}


@pytest.fixture
def data_dir_signer(cli_env: dict[str, str]) -> Signer:
    """The key ``ledgerbus`` finds by default: ``<data_dir>/keys/audit_ed25519.pem``."""
    return Signer(load_or_create_key(Path(cli_env["LEDGERBUS_DATA_DIR"]) / KEY_FILE))


async def test_cli_verifies_every_tenant(
    event_store: EventStore,
    registry: RegistryClient,
    data_dir_signer: Signer,
    audit_env: dict[str, str],
) -> None:
    await checkpointed_chain(event_store, registry, data_dir_signer)
    await event_store.append([new_event("globex", n) for n in range(5)])
    head = await event_store.head("acme")

    result = await run_cli(["audit", "verify"], audit_env)
    assert result.returncode == 0, result.stderr
    assert "verify acme: 16 events in " in result.stderr  # progress
    assert result.stdout.splitlines() == [
        f"ok acme length=16 head={head.hash.hex()} checkpoints=1",
        f"ok globex length=5 head={(await event_store.head('globex')).hash.hex()} checkpoints=0",
    ]

    await event_store.pool.execute(
        "UPDATE events SET body = body || '\\x00'::bytea "
        "WHERE tenant_id = 'globex' AND position = 3"
    )
    result = await run_cli(["audit", "verify"], audit_env)
    assert result.returncode == 1, result.stderr
    ok, failed = result.stdout.splitlines()
    assert ok.startswith("ok acme length=16")
    assert failed.startswith("FAILED globex position=3 reason=changed_bytes detail=")

    result = await run_cli(["audit", "verify", "--tenant", "acme"], audit_env)
    assert (result.returncode, result.stdout.split(" length")[0]) == (0, "ok acme")


async def test_cli_checkpoints_need_the_right_key(
    event_store: EventStore, registry: RegistryClient, audit_env: dict[str, str], tmp_path: Path
) -> None:
    await checkpointed_chain(event_store, registry, Signer(Ed25519PrivateKey.generate()))
    result = await run_cli(["audit", "verify", "--tenant", "acme"], audit_env)
    assert result.returncode == 1
    assert "position=11 reason=unknown_checkpoint_key" in result.stdout

    result = await run_cli(["audit", "verify", "--key", str(tmp_path / "none.pem")], audit_env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no audit key at")


async def test_cli_unknown_tenant_is_a_clear_error(
    event_store: EventStore, audit_env: dict[str, str]
) -> None:
    result = await run_cli(["audit", "verify", "--tenant", "nobody"], audit_env)
    assert result.returncode == 2
    assert result.stderr == "error: no events for tenant 'nobody'\n"
    assert result.stdout == ""
