"""Reading the gateway's live streams in tests: an SSE reader over httpx, events to publish."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from producers.publisher import build_event
from schemas.catalog import default_catalog
from schemas.models import Envelope
from tests.support.archive import PAYLOADS
from tests.support.gateway import RunningGateway, serve_gateway

CATALOG = default_catalog()
#: The types `events` cycles through: one agent.*, one workflow.*, two others.
TYPES = ("agent.heartbeat", "workflow.started", "cost.recorded", "budget.set")


def events(
    tenant_id: str,
    count: int,
    *,
    subjects: Sequence[str] = ("run-0",),
    types: Sequence[str] = TYPES,
    start: int = 0,
) -> list[Envelope[Any]]:
    """``count`` events cycling through ``types`` (of `TYPES`) and ``subjects``.

    One type and one subject put them all in one partition: one order.
    """
    return [
        build_event(
            CATALOG.get(types[n % len(types)]),
            subject=subjects[n % len(subjects)],
            tenant_id=tenant_id,
            data=PAYLOADS[types[n % len(types)]],
            source="test",
        )
        for n in range(start, start + count)
    ]


class EndOfStream(Exception):
    """The server ended the stream."""


@dataclass(frozen=True)
class SseMessage:
    id: str | None
    event: str | None
    data: str | None
    heartbeat: bool

    def json(self) -> dict[str, Any]:
        assert self.data is not None, self
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


class SseReader:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def message(self, timeout: float = 20.0) -> SseMessage:
        """The next message (event, error or heartbeat comment)."""
        fields: dict[str, str] = {}
        heartbeat = False
        async with asyncio.timeout(timeout):
            while True:
                try:
                    line = await anext(self._lines)
                except StopAsyncIteration:
                    raise EndOfStream from None
                if line == "":
                    if fields or heartbeat:
                        return SseMessage(
                            fields.get("id"), fields.get("event"), fields.get("data"), heartbeat
                        )
                elif line.startswith(":"):
                    heartbeat = line == ": heartbeat"
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")

    async def events(self, count: int, timeout: float = 20.0) -> list[SseMessage]:
        """The next ``count`` events, heartbeats skipped."""
        received: list[SseMessage] = []
        async with asyncio.timeout(timeout):
            while len(received) < count:
                message = await self.message(timeout)
                if not message.heartbeat:
                    received.append(message)
        return received


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[SseReader]:
    """``GET /v1/streams``, which must answer 200."""
    async with client.stream("GET", "/v1/streams", params=params, headers=headers) as response:
        if response.status_code != 200:
            raise AssertionError(f"{response.status_code}: {(await response.aread()).decode()}")
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)


def resume_after(
    client: httpx.AsyncClient, message: SseMessage, params: Mapping[str, Any] | None = None
) -> AbstractAsyncContextManager[SseReader]:
    """``GET /v1/streams`` with ``message``'s id as ``Last-Event-ID``, as EventSource does."""
    assert message.id is not None
    return sse(client, params, headers={"Last-Event-ID": message.id})


def another_gateway(
    gateway: RunningGateway, **settings: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    """A second gateway process on ``gateway``'s stack (its own hub), with ``settings`` changed."""
    changed = gateway.services.settings.model_copy(update=settings)
    return serve_gateway(gateway.services.endpoints, changed)


def ids(messages: Sequence[SseMessage]) -> list[str]:
    """The event ids in stream messages' JSON, in order."""
    return [message.json()["id"] for message in messages]
