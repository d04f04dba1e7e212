"""A small OpenAI-compatible chat endpoint with deterministic answers.

Tests and ``ledgerbus demo`` need an LLM that costs nothing, needs no network
and answers the same way every time, yet speaks the real wire protocol so the
real ``openai`` client (and the cost accounting around it) is what runs.

Usage is counted in words, not tokens: ``prompt_tokens`` is the number of
whitespace-separated words across all message contents, ``completion_tokens``
the words of the reply. The reply is ``stub.reply(messages)``; by default it
echoes the start of the last user message. Every call is recorded in
``stub.calls``. Requests it cannot read get a 400 with an OpenAI-style error body.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Reply = Callable[[list[dict[str, Any]]], str]
SUMMARY_WORDS = 8


def summary_reply(messages: list[dict[str, Any]]) -> str:
    """The default reply: the first words of the last user message."""
    last = next((m for m in reversed(messages) if m["role"] == "user"), None)
    said = text_of(last) if last is not None else ""
    return "Noted: " + " ".join(said.split()[:SUMMARY_WORDS])


def text_of(message: dict[str, Any]) -> str:
    """A message's text: its content string, or its text parts joined by spaces."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content or [])


def words(text: str) -> int:
    return len(text.split())


class BadChatRequest(ValueError):
    """A request the stub cannot answer; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class StubCall:
    """One chat request as the stub understood it."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    headers: dict[str, str]
    body: dict[str, Any]


class LLMStub:
    """The ASGI app (``app``), what tests steer (``reply``, ``send_usage``) and read (``calls``).

    ``send_usage=False`` plays a server that ignores ``stream_options`` and
    sends no usage at all.
    """

    def __init__(
        self,
        reply: Reply = summary_reply,
        *,
        models: Sequence[str] = ("stub-model",),
        send_usage: bool = True,
    ) -> None:
        self.reply = reply
        self.models = list(models)
        self.send_usage = send_usage
        self.calls: list[StubCall] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
            ]
        )

    async def _list_models(self, request: Request) -> Response:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "ledgerbus"}
            for model in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        try:
            call = read_call(await request.body(), dict(request.headers))
        except BadChatRequest as exc:
            error = {
                "message": str(exc),
                "type": "invalid_request_error",
                "param": exc.param,
                "code": None,
            }
            return JSONResponse({"error": error}, status_code=400)
        self.calls.append(call)
        answer = self.reply(call.messages)
        usage = {
            "prompt_tokens": sum(words(text_of(m)) for m in call.messages),
            "completion_tokens": words(answer),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        common: dict[str, Any] = {
            "id": f"chatcmpl-stub-{len(self.calls)}",
            "created": int(time.time()),
            "model": call.model,
        }
        if call.stream:
            sent_usage = usage if call.include_usage and self.send_usage else None
            return StreamingResponse(
                sse(chunks(common, answer, sent_usage)), media_type="text/event-stream"
            )
        message = {"role": "assistant", "content": answer}
        completion = {
            **common,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        if self.send_usage:
            completion["usage"] = usage
        return JSONResponse(completion)


def read_call(body: bytes, headers: dict[str, str]) -> StubCall:
    """The request's fields, checked the way an OpenAI server would."""
    try:
        request = json.loads(body)
    except ValueError:
        raise BadChatRequest("the body is not valid JSON") from None
    if not isinstance(request, dict):
        raise BadChatRequest("the body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise BadChatRequest("model must be a non-empty string", "model")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadChatRequest("messages must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        check_message(message, f"messages[{index}]")
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise BadChatRequest("stream must be a boolean", "stream")
    options = request.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadChatRequest("stream_options must be an object", "stream_options")
    if options and not stream:
        raise BadChatRequest("stream_options is only allowed with stream", "stream_options")
    include_usage = options.get("include_usage", False) is True
    return StubCall(model, messages, stream, include_usage, headers, request)


def check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadChatRequest(f"{where} must be an object with a role", where)
    content = message.get("content")
    if isinstance(content, str):
        return
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return
    raise BadChatRequest(f"{where}.content must be a string or a list of text parts", where)


def chunks(
    common: dict[str, Any], answer: str, usage: dict[str, int] | None
) -> list[dict[str, Any]]:
    """The streamed answer: the role, one chunk per word, the finish, then the usage."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**common, "object": "chat.completion.chunk", "choices": [choice]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [
        chunk({"content": word if n == 0 else f" {word}"}) for n, word in enumerate(answer.split())
    ]
    out.append(chunk({}, "stop"))
    if usage is not None:
        out.append({**common, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    return out


async def sse(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for event in events:
        yield f"data: {json.dumps(event)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@dataclass(frozen=True)
class ServedStub:
    """A running stub: ``url`` is the base URL an OpenAI client takes (it ends in /v1)."""

    stub: LLMStub
    url: str


@asynccontextmanager
async def serve(
    host: str = "127.0.0.1", port: int = 0, stub: LLMStub | None = None
) -> AsyncIterator[ServedStub]:
    """Serve ``stub`` (a new one by default) with uvicorn, as a task of this event
    loop, on ``host:port`` (0: any free port); stops when the block ends."""
    stub = stub or LLMStub()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: uvicorn sets TCP_NODELAY only on such sockets.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    with sock:
        sock.bind((host, port))
        sock.listen(128)
        config = uvicorn.Config(stub.app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()  # start-up failed: raise why
            await asyncio.sleep(0.01)
        bound = sock.getsockname()[1]
        name = f"[{host}]" if family == socket.AF_INET6 else host
        try:
            yield ServedStub(stub, f"http://{name}:{bound}/v1")
        finally:
            server.should_exit = True
            await serving
