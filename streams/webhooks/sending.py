"""One signed POST of a delivery body: a dispatcher attempt, or the gateway's test ping.

Both go out the same way, so a ping proves what a delivery would do: the SSRF
guard resolves and checks the URL and the request connects to the checked
address (a second DNS answer cannot slip in), the body is signed afresh with
Standard Webhooks headers, redirects are never followed, proxies from the
environment are ignored, and only the start of the answer is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from streams.webhooks.metrics import ERRORS
from streams.webhooks.payload import CONTENT_TYPE
from streams.webhooks.policy import RETRY_AFTER_STATUSES, Result, retry_after
from streams.webhooks.settings import WebhookSettings
from streams.webhooks.signing import signature_headers
from streams.webhooks.ssrf import BlockedDestination, Destination, InvalidURL, SsrfGuard

log = logging.getLogger("ledgerbus.webhooks")

USER_AGENT = "ledgerbus-webhooks/1"


@dataclass(frozen=True, slots=True)
class Signed:
    """What to send: ``body`` to ``url``, signed with ``secret`` as ``delivery_id``."""

    url: str
    secret: str
    delivery_id: str
    body: str


def http_client(settings: WebhookSettings, connections: int) -> httpx.AsyncClient:
    """The client attempts go through (keep-alive, no redirects, no proxies)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(settings.timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )


async def send(
    client: httpx.AsyncClient, guard: SsrfGuard, settings: WebhookSettings, signed: Signed
) -> Result:
    """POST once; never raises: every failure becomes the result's error."""
    began = time.perf_counter()
    fields: dict[str, Any] = {"status_code": None}
    try:
        async with asyncio.timeout(settings.timeout):
            destination = await guard.check(signed.url)
            fields = await _post(client, settings, signed, destination)
    except (BlockedDestination, InvalidURL) as exc:
        fields["error"] = str(exc)
    except TimeoutError:
        fields["error"] = f"timed out after {settings.timeout:g}s"
    except httpx.HTTPError as exc:
        fields["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
    except Exception as exc:  # a bug: count it, and let the schedule retry
        ERRORS.labels("attempt").inc()
        log.exception("webhook attempt %s failed unexpectedly", signed.delivery_id)
        fields["error"] = f"internal error: {exc!r}"
    latency_ms = round((time.perf_counter() - began) * 1000)
    return Result(latency_ms=latency_ms, finished_at=datetime.now(UTC), **fields)


async def _post(
    client: httpx.AsyncClient, settings: WebhookSettings, signed: Signed, destination: Destination
) -> dict[str, Any]:
    headers = {
        "content-type": CONTENT_TYPE,
        **signature_headers(signed.secret, signed.delivery_id, signed.body, datetime.now(UTC)),
    }
    url, extensions = signed.url, {}
    if destination.host != str(destination.address):  # connect to the checked address
        url = destination.pinned_url
        headers["host"] = httpx.URL(signed.url).netloc.decode()
        extensions["sni_hostname"] = destination.host
    request = client.build_request(
        "POST", url, content=signed.body.encode(), headers=headers, extensions=extensions
    )
    response = await client.send(request, stream=True)
    try:
        body = await _read_start(response.aiter_bytes(), settings.max_response_body)
    finally:
        await response.aclose()
    asked = None
    if response.status_code in RETRY_AFTER_STATUSES:
        asked = retry_after(response.headers.get("retry-after"), datetime.now(UTC))
    return {"status_code": response.status_code, "response_body": body, "retry_after": asked}


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
