"""``Idempotency-Key``: a retried publish answers what the first one did, and publishes once.

The first request with a key claims it in Redis (``SET NX`` of a pending
marker holding the body's fingerprint), runs, then stores its status and body
for the configured TTL (24 h). A retry with the same body gets that stored
answer; with a different body, 409. A duplicate that arrives while the first
is still running waits (bounded) for its answer instead of publishing again.
A failed first attempt releases the key, so the retry runs for real.

Keys live in Redis, which every gateway process shares; when Redis does not
answer, a request that carries a key is refused (503) rather than risk a
double publish. Redis keys are hashes of (tenant, key): a tenant can neither
see nor collide with another tenant's keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

log = logging.getLogger("ledgerbus.gateway.idempotency")

REPLAYED = Counter(
    "ledgerbus_gateway_idempotent_replays_total", "Requests answered from a stored response"
)
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_SANE_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as the IETF draft suggests

# Store ``ARGV[2]`` (for ``ARGV[3]`` seconds) / delete, only if the key still
# holds our pending marker ``ARGV[1]``: a marker that expired and was claimed
# by another request is not ours to overwrite.
_COMPLETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return false
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class InvalidIdempotencyKey(ValueError):
    """The header's value is not a usable key."""


class IdempotencyConflict(Exception):
    """The key was used for another body, or its first request is still running."""

    def __init__(self, detail: str, *, in_progress: bool) -> None:
        super().__init__(detail)
        self.in_progress = in_progress


class IdempotencyUnavailable(RuntimeError):
    """Redis does not answer, so a keyed request cannot be made safe to retry."""


@dataclass(frozen=True)
class Answer:
    """What a request answered: replayed verbatim to retries."""

    status: int
    body: Any


@dataclass(frozen=True)
class Outcome:
    answer: Answer
    replayed: bool


def check_key(key: str) -> str:
    if not _SANE_KEY.match(key):
        raise InvalidIdempotencyKey(f"{HEADER} must be 1 to 255 visible ASCII characters")
    return key


def fingerprint(method: str, path: str, body: Any) -> str:
    """SHA-256 of the request: method, path and the body's canonical JSON (key order
    and whitespace do not matter, values do)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical.encode())
    return digest.hexdigest()


class Idempotency:
    """Keys of one gateway: ``<prefix>idempotency:<sha256(tenant, key)>``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        ttl_seconds: int,
        *,
        pending_seconds: int = 120,
        wait_seconds: float = 15.0,
    ) -> None:
        self.redis = redis
        self.prefix = f"{prefix}idempotency:"
        self.ttl_seconds = ttl_seconds
        #: A crashed request's marker frees the key after this; longer than any publish.
        self.pending_seconds = pending_seconds
        #: How long a duplicate waits for the first request's answer.
        self.wait_seconds = wait_seconds

    def redis_key(self, tenant_id: str, key: str) -> str:
        return self.prefix + hashlib.sha256(f"{tenant_id}\0{key}".encode()).hexdigest()

    async def run(
        self,
        tenant_id: str,
        key: str,
        fingerprint: str,
        action: Callable[[], Awaitable[Answer]],
    ) -> Outcome:
        """``action``'s answer, run at most once per (tenant, key) within the TTL.

        Only successful (2xx) answers are kept: after an error the key is free,
        so the client can correct the body and retry under the same key.
        """
        name = self.redis_key(tenant_id, key)
        marker = json.dumps(
            {"state": "pending", "fingerprint": fingerprint, "owner": secrets.token_hex(8)}
        )
        stored = await self._claim_or_wait(name, marker, fingerprint)
        if stored is not None:
            REPLAYED.inc()
            return Outcome(stored, replayed=True)
        try:
            answer = await action()
        except BaseException:
            await self._quietly(self._script(_RELEASE, name, marker), "release")
            raise
        if 200 <= answer.status < 300:
            done = json.dumps(
                {
                    "state": "done",
                    "fingerprint": fingerprint,
                    "status": answer.status,
                    "body": answer.body,
                }
            )
            await self._quietly(
                self._script(_COMPLETE, name, marker, done, str(self.ttl_seconds)), "store"
            )
        else:
            await self._quietly(self._script(_RELEASE, name, marker), "release")
        return Outcome(answer, replayed=False)

    async def _claim_or_wait(self, name: str, marker: str, fingerprint: str) -> Answer | None:
        """None once we own the key; else the stored answer of the request that did."""
        deadline = time.monotonic() + self.wait_seconds
        pause = 0.005
        while True:
            try:
                if await self.redis.set(name, marker, nx=True, ex=self.pending_seconds):
                    return None
                held = await self.redis.get(name)
            except (RedisError, OSError) as exc:
                raise IdempotencyUnavailable(
                    f"{HEADER} cannot be honoured: redis does not answer ({exc}); "
                    f"retry later, or send the request without {HEADER}"
                ) from None
            if held is None:  # released or expired between the two calls: claim again
                continue
            state = json.loads(held)
            if state["fingerprint"] != fingerprint:
                raise IdempotencyConflict(
                    f"{HEADER} was already used with a different request body",
                    in_progress=False,
                )
            if state["state"] == "done":
                return Answer(state["status"], state["body"])
            if time.monotonic() >= deadline:
                raise IdempotencyConflict(
                    f"a request with this {HEADER} is still being processed; retry shortly",
                    in_progress=True,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def _script(self, script: str, name: str, *args: str) -> Any:
        return await self.redis.eval(script, 1, name, *args)

    async def _quietly(self, call: Awaitable[Any], what: str) -> None:
        """After the action ran, a Redis failure must not turn its answer into an
        error: the pending marker then expires on its own."""
        try:
            await call
        except (RedisError, OSError) as exc:
            log.warning("could not %s an idempotency key: %s", what, exc)
