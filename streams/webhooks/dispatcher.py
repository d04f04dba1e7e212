"""The dispatcher: claims due deliveries, POSTs them, hands the outcomes to the recorder.

One per worker, with one pooled client; each attempt is one
``streams.webhooks.sending.send`` (SSRF-checked, signed, pinned to the checked
address). It wakes at once when this worker enqueues (``wake``), records, or
frees a slot of a full endpoint, and otherwise looks for due work every
``poll_interval``, which is how retries enqueued or left behind by other and
dead workers are picked up. Claims are bounded per worker (``max_in_flight``)
and per endpoint (``concurrency``, counted across workers by the queue; an
attempt that has its answer no longer holds a slot while its outcome waits to
be committed).

Recording runs beside the claiming, and announcing beside the recording:
outcomes collect while one batch is being committed, so under load each
transaction records many attempts, and no cycle waits for Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import httpx

from streams.context import TRANSIENT, StreamsContext
from streams.webhooks import housekeeping, queue
from streams.webhooks.announcer import Announcer
from streams.webhooks.metrics import ERRORS
from streams.webhooks.recorder import NAME, Outcome, Recorder
from streams.webhooks.sending import Signed, http_client, send
from streams.webhooks.settings import WebhookSettings
from streams.webhooks.ssrf import SsrfGuard

log = logging.getLogger("ledgerbus.webhooks")

#: Outcomes recorded per transaction at most.
RECORD_BATCH = 1000
#: A stopping worker waits this long to record what it has before giving leases back.
STOP_GRACE = 5.0


def now() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    """See the module doc; ``run`` until cancelled."""

    def __init__(self, context: StreamsContext, settings: WebhookSettings) -> None:
        self.context = context
        self.settings = settings
        self.guard = SsrfGuard(settings.allowed_networks, settings.allowed_hosts)
        self.recorder = Recorder(context, settings)
        self.announcer = Announcer(context)
        self._wake = asyncio.Event()
        self._outcomes: list[Outcome] = []
        self._answered: set[str] = set()  # attempts over, outcomes not yet committed
        self._flying: Counter[tuple[str, str]] = Counter()  # attempts per endpoint
        self._outcomes_ready = asyncio.Event()
        self._attempts: dict[asyncio.Task[Outcome], queue.Claim] = {}

    def wake(self) -> None:
        """Look for due work now (something was enqueued or finished)."""
        self._wake.set()

    async def run(self) -> None:
        async with http_client(self.settings, self.settings.max_in_flight) as client:
            helpers = [
                asyncio.create_task(self._record_forever()),
                asyncio.create_task(self.announcer.run()),
                asyncio.create_task(housekeeping.run(self.context, self.settings)),
            ]
            try:
                await self._claim_forever(client)
            finally:
                await self._stop(helpers)

    # -- claiming and attempting ------------------------------------------------

    async def _claim_forever(self, client: httpx.AsyncClient) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                free = self.settings.max_in_flight - len(self._attempts)
                if free > 0:
                    for claim in await self._claim(free):
                        self._start(client, claim)
                failures = 0
            except Exception as exc:
                failures += 1
                if not isinstance(exc, TRANSIENT):
                    ERRORS.labels("claim").inc()
                log.warning("webhook dispatcher: %r; retrying", exc, exc_info=failures == 1)
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    async def _claim(self, limit: int) -> list[queue.Claim]:
        at = now()
        async with self.context.pool.acquire() as conn:
            return await queue.claim(
                conn,
                now=at,
                lease_until=at + timedelta(seconds=self.settings.lease),
                limit=limit,
                per_endpoint=self.settings.concurrency,
                answered=list(self._answered),
            )

    def _start(self, client: httpx.AsyncClient, claim: queue.Claim) -> None:
        task = asyncio.create_task(self._attempt(client, claim))
        self._attempts[task] = claim
        self._flying[(claim.tenant_id, claim.webhook_id)] += 1
        task.add_done_callback(self._attempted)

    def _attempted(self, task: asyncio.Task[Outcome]) -> None:
        claim = self._attempts.pop(task)
        endpoint = (claim.tenant_id, claim.webhook_id)
        was_full = self._flying[endpoint] >= self.settings.concurrency
        self._flying[endpoint] -= 1
        if not self._flying[endpoint]:
            del self._flying[endpoint]
        if task.cancelled():
            return
        self._outcomes.append(task.result())
        self._answered.add(claim.delivery_id)
        self._outcomes_ready.set()
        if was_full:  # more of the endpoint's deliveries may be waiting for this slot
            self.wake()

    async def _attempt(self, client: httpx.AsyncClient, claim: queue.Claim) -> Outcome:
        """POST once; never raises: every failure becomes the attempt's error."""
        signed = Signed(claim.url, claim.secret, claim.delivery_id, claim.body)
        return Outcome(claim, await send(client, self.guard, self.settings, signed))

    # -- recording ----------------------------------------------------------------

    async def _record_forever(self) -> None:
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready.clear()
            while self._outcomes:
                batch = self._outcomes[:RECORD_BATCH]
                del self._outcomes[:RECORD_BATCH]
                try:
                    await self._record(batch)
                except asyncio.CancelledError:
                    self._outcomes[:0] = batch
                    raise
                except Exception:  # a bug: the leases run out and the attempts are retried
                    ERRORS.labels("record").inc()
                    log.exception("recording %d webhook attempts failed", len(batch))

    async def _record(self, batch: list[Outcome]) -> None:
        try:
            events = await self.recorder.record(batch)
        finally:
            self._answered.difference_update(o.claim.delivery_id for o in batch)
        self.wake()  # ordered lines move on
        self.announcer.add(events)

    # -- stopping -------------------------------------------------------------------

    async def _stop(self, helpers: list[asyncio.Task[None]]) -> None:
        """Record and announce what finished, give back the leases of what did not."""
        unfinished = list(self._attempts.values())
        for task in [*self._attempts, *helpers]:
            task.cancel()
        await asyncio.gather(*helpers, *self._attempts, return_exceptions=True)
        try:
            async with asyncio.timeout(STOP_GRACE):
                if self._outcomes:
                    await self._record(self._outcomes)
                await self.announcer.flush()
                if unfinished:
                    async with self.context.pool.acquire() as conn:
                        await queue.release(conn, _tokens(unfinished), now())
        except Exception as exc:
            log.warning("%s: stopping with leases held (%r); they will be retaken", NAME, exc)


def _tokens(claims: Iterable[queue.Claim]) -> list[uuid.UUID]:
    return list({claim.token for claim in claims})
