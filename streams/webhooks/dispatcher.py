"""The dispatcher: claims due deliveries, POSTs them, hands the outcomes to the recorder.

One per worker, with one pooled ``httpx.AsyncClient`` (keep-alive, redirects
never followed, proxies from the environment ignored so the SSRF guard's
checked address is the one connected to). It wakes at once when this worker
enqueues (``wake``), records, or frees a slot of a full endpoint, and
otherwise looks for due work every ``poll_interval``, which is how retries
enqueued or left behind by other and dead workers are picked up. Claims are
bounded per worker (``max_in_flight``) and per endpoint (``concurrency``,
counted across workers by the queue; an attempt that has its answer no longer
holds a slot while its outcome waits to be committed).

Recording runs beside the claiming, and announcing beside the recording:
outcomes collect while one batch is being committed, so under load each
transaction records many attempts, and no cycle waits for Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from streams.context import TRANSIENT, StreamsContext
from streams.webhooks import housekeeping, queue
from streams.webhooks.announcer import Announcer
from streams.webhooks.metrics import ERRORS
from streams.webhooks.payload import CONTENT_TYPE
from streams.webhooks.policy import RETRY_AFTER_STATUSES, Result, retry_after
from streams.webhooks.recorder import NAME, Outcome, Recorder
from streams.webhooks.settings import WebhookSettings
from streams.webhooks.signing import signature_headers
from streams.webhooks.ssrf import BlockedDestination, Destination, InvalidURL, SsrfGuard

log = logging.getLogger("ledgerbus.webhooks")

USER_AGENT = "ledgerbus-webhooks/1"
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
        limits = httpx.Limits(
            max_connections=self.settings.max_in_flight,
            max_keepalive_connections=self.settings.max_in_flight,
        )
        async with httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(self.settings.timeout),
            limits=limits,
            trust_env=False,
            headers={"user-agent": USER_AGENT},
        ) as client:
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
        began = time.perf_counter()
        fields: dict[str, Any] = {"status_code": None}
        try:
            async with asyncio.timeout(self.settings.timeout):
                destination = await self.guard.check(claim.url)
                fields = await self._post(client, claim, destination)
        except (BlockedDestination, InvalidURL) as exc:
            fields["error"] = str(exc)
        except TimeoutError:
            fields["error"] = f"timed out after {self.settings.timeout:g}s"
        except httpx.HTTPError as exc:
            fields["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
        except Exception as exc:  # a bug: count it, and let the schedule retry
            ERRORS.labels("attempt").inc()
            log.exception("webhook attempt %s failed unexpectedly", claim.delivery_id)
            fields["error"] = f"internal error: {exc!r}"
        latency_ms = round((time.perf_counter() - began) * 1000)
        return Outcome(claim, Result(latency_ms=latency_ms, finished_at=now(), **fields))

    async def _post(
        self, client: httpx.AsyncClient, claim: queue.Claim, destination: Destination
    ) -> dict[str, Any]:
        headers = {
            "content-type": CONTENT_TYPE,
            **signature_headers(claim.secret, claim.delivery_id, claim.body, now()),
        }
        url, extensions = claim.url, {}
        if destination.host != str(destination.address):  # connect to the checked address
            url = destination.pinned_url
            headers["host"] = httpx.URL(claim.url).netloc.decode()
            extensions["sni_hostname"] = destination.host
        request = client.build_request(
            "POST", url, content=claim.body.encode(), headers=headers, extensions=extensions
        )
        response = await client.send(request, stream=True)
        try:
            body = await _read_start(response.aiter_bytes(), self.settings.max_response_body)
        finally:
            await response.aclose()
        asked = None
        if response.status_code in RETRY_AFTER_STATUSES:
            asked = retry_after(response.headers.get("retry-after"), now())
        return {
            "status_code": response.status_code,
            "response_body": body,
            "retry_after": asked,
        }

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


async def _read_start(chunks: AsyncIterator[bytes], limit: int) -> str | None:
    """The first ``limit`` characters of a response body (the rest is not read)."""
    if limit == 0:
        return None
    kept = bytearray()
    async for chunk in chunks:
        kept += chunk
        if len(kept) >= limit * 4:  # enough bytes for ``limit`` UTF-8 characters
            break
    return kept.decode(errors="replace")[:limit] if kept else None


def _tokens(claims: Iterable[queue.Claim]) -> list[uuid.UUID]:
    return list({claim.token for claim in claims})
