"""Audit verification: recompute a tenant's hash chain from the stored rows.

The rows stream through a server-side cursor inside one read-only
REPEATABLE READ transaction, so memory stays constant however long the chain
is and the rows, the chain head and every lookup see one snapshot even while
appenders keep writing.

Each row, in position order, is checked in this order; the first check that
fails ends verification and names the row (so the earliest bad position wins,
and on one row the earlier check's reason wins):

1. ``missing_position``: the row's position is not the previous one + 1
   (reported at the first missing position);
2. the row's ``prev_hash`` is not the previous row's hash (GENESIS for
   position 1): ``reordered`` if it is the hash of another row of the tenant
   (the row was moved), ``broken_link`` otherwise;
3. SHA-256(previous hash ‖ body) is not the row's stored ``hash``:
   ``changed_bytes`` if the successor (the next row's ``prev_hash``, or the
   chain head for the last row) still carries the stored hash, so the body
   changed after it was chained; ``hash_mismatch`` otherwise (the ``hash``
   column itself was edited);
4. on an ``audit.checkpoint`` row, when checkpoint keys are given:
   ``undecodable_checkpoint``, ``unknown_checkpoint_key``,
   ``bad_checkpoint_signature`` (the signature does not cover the decoded
   tenant, position, head hash and time), then ``checkpoint_mismatch`` (the
   claimed position is not before the checkpoint, or the hash stored there is
   not the signed head hash: the chain no longer passes through it).

After the last row, the ``chain_heads`` row must agree: if it is ahead of the
rows, rows were removed from the end (``missing_position`` after the last
row); any other disagreement is ``head_mismatch`` at the last row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from event_store.chain import GENESIS
from event_store.checkpoints import CheckpointKeys, UndecodableCheckpoint
from schemas.models import AuditCheckpoint

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

#: Called after each fetched batch with the number of rows it held.
Progress = Callable[[int], None]

_ROWS = f"""
    SELECT position, prev_hash, hash, body, type = '{AuditCheckpoint.event_type}', schema_id
    FROM events WHERE tenant_id = $1 ORDER BY position
"""


class Reason(StrEnum):
    """Why a chain failed; the order of checks is in the module docstring."""

    MISSING_POSITION = "missing_position"
    REORDERED = "reordered"
    BROKEN_LINK = "broken_link"
    CHANGED_BYTES = "changed_bytes"
    HASH_MISMATCH = "hash_mismatch"
    UNDECODABLE_CHECKPOINT = "undecodable_checkpoint"
    UNKNOWN_CHECKPOINT_KEY = "unknown_checkpoint_key"
    BAD_CHECKPOINT_SIGNATURE = "bad_checkpoint_signature"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    HEAD_MISMATCH = "head_mismatch"


@dataclass(frozen=True)
class Failure:
    position: int
    reason: Reason
    detail: str


@dataclass(frozen=True)
class Verification:
    """The outcome for one tenant: how far the chain held, and why it stopped if it did."""

    tenant_id: str
    length: int
    """Rows verified: the whole chain when ok, the rows before the failure otherwise."""
    head: bytes
    """Hash of the last verified row (GENESIS if none)."""
    checkpoints: int
    """Checkpoints whose signature and position were verified."""
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


class NoEvents(LookupError):
    """The tenant has no chain to verify."""


async def tenants(pool: asyncpg.Pool) -> list[str]:
    """Every tenant with rows or a chain head, so a deleted head row hides no chain."""
    # A loose index scan over the primary key: one probe per tenant, not per row.
    rows = await pool.fetch(
        """
        WITH RECURSIVE t AS (
            (SELECT tenant_id FROM events ORDER BY tenant_id LIMIT 1)
            UNION ALL
            SELECT (SELECT e.tenant_id FROM events e WHERE e.tenant_id > t.tenant_id
                    ORDER BY e.tenant_id LIMIT 1)
            FROM t WHERE t.tenant_id IS NOT NULL
        )
        SELECT tenant_id FROM t WHERE tenant_id IS NOT NULL
        UNION SELECT tenant_id FROM chain_heads WHERE position > 0
        ORDER BY 1
        """
    )
    return [row["tenant_id"] for row in rows]


async def verify_chain(
    pool: asyncpg.Pool,
    tenant_id: str,
    *,
    checkpoints: CheckpointKeys | None = None,
    progress: Progress | None = None,
    fetch_size: int = 20_000,
) -> Verification:
    """Verify one tenant's chain; checkpoint rows are checked only if ``checkpoints`` is given.

    Raises ``NoEvents`` if the tenant has neither rows nor a chain head.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow(
            "SELECT position, hash FROM chain_heads WHERE tenant_id = $1", tenant_id
        )
        chain = _Chain(conn, tenant_id, checkpoints, head)
        cursor = await conn.cursor(_ROWS, tenant_id)
        while rows := await cursor.fetch(fetch_size):
            failure = await chain.extend(rows)
            if failure is not None:
                return chain.result(failure)
            if progress is not None:
                progress(len(rows))
        if chain.length == 0 and (head is None or head["position"] == 0):
            raise NoEvents(f"no events for tenant {tenant_id!r}")
        return chain.result(chain.check_head())


class _Chain:
    """The verified prefix of one chain, extended a batch of rows at a time."""

    def __init__(
        self,
        conn: Connection,
        tenant_id: str,
        keys: CheckpointKeys | None,
        chain_head: asyncpg.Record | None,
    ) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.keys = keys
        self.chain_head = chain_head
        self.length = 0
        self.head = GENESIS
        self.checkpoints = 0

    async def extend(self, rows: list[asyncpg.Record]) -> Failure | None:
        """Check ``rows`` (the next ones in position order); the first failure, if any."""
        sha256, keys = hashlib.sha256, self.keys
        length, prev = self.length, self.head
        try:
            for position, prev_hash, digest, body, is_checkpoint, schema_id in rows:
                if position != length + 1:
                    return _missing(length, position)
                if prev_hash != prev:
                    return await self._bad_link(position, prev_hash, prev)
                computed = sha256(prev + body).digest()
                if computed != digest:
                    return await self._bad_hash(position, computed, digest)
                if is_checkpoint and keys is not None:
                    failure = await self._check_checkpoint(keys, position, schema_id, body)
                    if failure is not None:
                        return failure
                length, prev = position, digest
            return None
        finally:
            self.length, self.head = length, prev

    def result(self, failure: Failure | None) -> Verification:
        return Verification(self.tenant_id, self.length, self.head, self.checkpoints, failure)

    def check_head(self) -> Failure | None:
        """Whether the ``chain_heads`` row agrees with the verified rows."""
        head, length = self.chain_head, self.length
        if head is not None and (head["position"], head["hash"]) == (length, self.head):
            return None
        if head is not None and head["position"] > length:
            return Failure(
                length + 1,
                Reason.MISSING_POSITION,
                f"the chain head is at position {head['position']} but the rows end at {length}",
            )
        said = (
            "no chain head row"
            if head is None
            else f"the chain head says position {head['position']} hash {head['hash'].hex()}"
        )
        return Failure(
            length,
            Reason.HEAD_MISMATCH,
            f"{said}; the rows end at position {length} hash {self.head.hex()}",
        )

    async def _bad_link(self, position: int, prev_hash: bytes, expected: bytes) -> Failure:
        moved_from = await self.conn.fetchval(
            "SELECT position FROM events WHERE tenant_id = $1 AND hash = $2 LIMIT 1",
            self.tenant_id,
            prev_hash,
        )
        predecessor = "genesis" if position == 1 else f"the hash of position {position - 1}"
        if moved_from is not None:
            return Failure(
                position,
                Reason.REORDERED,
                f"the row at position {position} follows the row now at position "
                f"{moved_from}, not {predecessor}: rows are out of order",
            )
        return Failure(
            position,
            Reason.BROKEN_LINK,
            f"prev_hash {prev_hash.hex()} is not {predecessor} ({expected.hex()}) "
            "nor the hash of any other row",
        )

    async def _bad_hash(self, position: int, computed: bytes, stored: bytes) -> Failure:
        successor = await self.conn.fetchval(
            "SELECT prev_hash FROM events WHERE tenant_id = $1 AND position = $2",
            self.tenant_id,
            position + 1,
        )
        if successor is None and self.chain_head is not None:
            successor = self.chain_head["hash"]
        if successor == stored:
            return Failure(
                position,
                Reason.CHANGED_BYTES,
                f"the body no longer hashes to the stored hash {stored.hex()}, which the "
                f"chain still links to: the body changed (it hashes to {computed.hex()})",
            )
        return Failure(
            position,
            Reason.HASH_MISMATCH,
            f"the stored hash {stored.hex()} is not SHA-256(prev ‖ body) = {computed.hex()}, "
            "and the chain does not link to it: the hash column was edited",
        )

    async def _check_checkpoint(
        self, keys: CheckpointKeys, position: int, schema_id: int, body: bytes
    ) -> Failure | None:
        try:
            checkpoint = await keys.decode(self.tenant_id, schema_id, body)
        except UndecodableCheckpoint as exc:
            return Failure(position, Reason.UNDECODABLE_CHECKPOINT, str(exc))
        public_key = keys.public_keys.get(checkpoint.key_id)
        if public_key is None:
            return Failure(
                position,
                Reason.UNKNOWN_CHECKPOINT_KEY,
                f"signed by key {checkpoint.key_id}, which is not among the known keys "
                f"({', '.join(sorted(keys.public_keys)) or 'none'})",
            )
        if not checkpoint.signed_by(public_key):
            return Failure(
                position,
                Reason.BAD_CHECKPOINT_SIGNATURE,
                f"the signature does not verify with key {checkpoint.key_id}",
            )
        claimed = checkpoint.position
        stored = None
        if claimed < position:  # rows before this one are verified: their hashes are sound
            stored = await self.conn.fetchval(
                "SELECT hash FROM events WHERE tenant_id = $1 AND position = $2",
                self.tenant_id,
                claimed,
            )
        if stored != checkpoint.head_hash:
            return Failure(
                position,
                Reason.CHECKPOINT_MISMATCH,
                f"the checkpoint signs head {checkpoint.head_hash.hex()} at position {claimed}, "
                f"but the chain has {stored.hex() if stored else 'no verified row'} there",
            )
        self.checkpoints += 1
        return None


def _missing(length: int, position: int) -> Failure:
    where = "the chain starts" if length == 0 else f"position {length} is followed"
    return Failure(length + 1, Reason.MISSING_POSITION, f"{where} at position {position}")
