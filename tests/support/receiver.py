"""A webhook receiver served by the test over real HTTP/1.1 (asyncio streams, keep-alive).

It records every request, verifies each signature with the reference
``standardwebhooks`` library (against the secret registered for the path),
and answers 200 unless told otherwise: scripted answers per path (500, 429 +
Retry-After, 410, a delay longer than the sender's timeout). ``stop`` and
``start`` take it down and up again on the same port (every connection is
dropped), to play an endpoint that is unreachable for a while.

It is a deliberately small HTTP server (Content-Length bodies, keep-alive,
no chunked requests) rather than uvicorn: the benchmark needs a receiver
that is not itself the bottleneck, and uvicorn's pure-Python h11 stack
caps at a few hundred requests per second on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class BadRequest(Exception):
    """The sender spoke HTTP this receiver does not accept."""


@dataclass(frozen=True)
class Answer:
    """What to answer one request with."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"

    def encode(self) -> bytes:
        reason = HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {reason}", f"content-length: {len(self.body)}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(frozen=True)
class Received:
    """One request as it arrived, and how it was answered."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    verified: bool
    status: int
    at: float  # time.monotonic() on arrival
    late: bool = False  # answered after a delay meant to time the sender out

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def event_id(self) -> str:
        return str(self.document["id"])

    @property
    def ok(self) -> bool:
        return self.verified and 200 <= self.status < 300 and not self.late


class Receiver:
    """See the module doc. ``url(path)`` is where an endpoint points."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._secrets: dict[str, Webhook] = {}
        self._scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
        self.port = 0

    @property
    def running(self) -> bool:
        return self._server is not None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def expect(self, path: str, secret: str) -> None:
        """Accept requests on ``path`` signed with ``secret``."""
        self._secrets[path] = Webhook(secret)

    def answer(self, path: str, answer: Answer, times: int = 1) -> None:
        """Answer the next ``times`` requests on ``path`` with ``answer`` (then 200 again)."""
        self._scripts[path].extend([answer] * times)

    def heal(self, path: str) -> None:
        """Drop the answers still scripted for ``path``: 200 from now on."""
        self._scripts.pop(path, None)

    def received(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    def delivered(self, path: str) -> list[Received]:
        """Requests on ``path`` that were verified and answered 2xx in time, in arrival order."""
        return [request for request in self.received(path) if request.ok]

    async def start(self) -> None:
        """Listen (again) on the same port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection: senders get connection errors."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._connections):
            writer.transport.abort()
        await asyncio.gather(*self._connections.values(), return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, BadRequest):
            pass
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Handle one request; False when the sender closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        arrived = time.monotonic()
        request_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers or method != "POST":
            raise BadRequest(request_line)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        script = self._scripts.get(path)
        answer = script.popleft() if script else Answer()
        if path not in self._secrets:
            answer = Answer(404)
        self.requests.append(
            Received(
                path,
                headers,
                body,
                self._verify(path, body, headers),
                answer.status,
                arrived,
                late=answer.delay > 0,
            )
        )
        if answer.delay:
            with contextlib.suppress(TimeoutError):  # data or EOF: the sender gave up
                await asyncio.wait_for(reader.read(1), answer.delay)
                return False
        writer.write(answer.encode())
        await writer.drain()
        return True

    def _verify(self, path: str, body: bytes, headers: dict[str, str]) -> bool:
        signer = self._secrets.get(path)
        if signer is None:
            return False
        try:
            signer.verify(body, headers)
        except WebhookVerificationError:
            return False
        return True


@asynccontextmanager
async def serve_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        if receiver.running:
            await receiver.stop()
