"""LLM calls that pay their way onto the bus: every call emits one ``cost.recorded``.

A thin wrapper around ``openai.AsyncOpenAI``, so any OpenAI-compatible endpoint
works (OpenAI, Ollama, vLLM, LiteLLM). Each successful call publishes one
``cost.recorded`` (subject: the run id, as the budget processor keys costs)
with the tokens from the response's ``usage``, the latency and the cost from
the ``PricingTable``, and waits for Kafka's confirmation before handing the
answer back: an answer the caller holds is an answer that was accounted.

What is recorded when the numbers are not all there:

- a model the table does not price: its real tokens, cost 0, ``priced=False``,
  ``ledgerbus_llm_unpriced_total{model}`` and one warning per model (per client);
- an answer without ``usage`` (a server that ignores ``stream_options``): 0
  tokens, cost 0, ``priced=False``, ``ledgerbus_llm_usage_missing_total{model}``
  and one warning per model. The call is still on the bus, so it can be found
  and priced later, rather than silently free;
- a stream the caller stops reading early: when the iterator is closed, the
  rest of the stream is read (unseen) up to its final usage chunk, then the
  cost is published: the provider bills the whole answer anyway;
- a call that raises (the request, or the stream midway): nothing is published,
  the error is re-raised.

The model priced and recorded is the one the caller asked for, which is the
name the pricing table is written in (servers often answer with a dated name).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from openai import AsyncOpenAI, AsyncStream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from prometheus_client import Counter, Histogram
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.pricing import PricingTable
from producers.publisher import Publisher, build_event

log = logging.getLogger("ledgerbus.llm")
T = TypeVar("T")

#: Sent to a self-hosted endpoint when no key is configured: they ignore it,
#: but the openai client refuses to start without one.
NO_KEY = "no-key"

CALLS = Counter(
    "ledgerbus_llm_calls_total",
    "LLM calls, by outcome (ok, error)",
    ["provider", "model", "outcome"],
)
TOKENS = Counter(
    "ledgerbus_llm_tokens_total",
    "Tokens the endpoints reported, by kind (input, output)",
    ["provider", "model", "kind"],
)
LATENCY = Histogram(
    "ledgerbus_llm_latency_seconds",
    "From request to the whole answer (a stream's last chunk)",
    ["provider", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
UNPRICED = Counter(
    "ledgerbus_llm_unpriced_total", "Calls to models the pricing table lacks (cost 0)", ["model"]
)
USAGE_MISSING = Counter(
    "ledgerbus_llm_usage_missing_total", "Answers that reported no token usage (cost 0)", ["model"]
)


class LLMSettings(BaseSettings):
    """``LEDGERBUS_LLM_*``: which endpoint to call, and how to price it."""

    model_config = SettingsConfigDict(env_prefix="LEDGERBUS_LLM_", extra="ignore")

    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (…/v1); unset = OpenAI's own"
    )
    api_key: SecretStr | None = Field(
        None, description="API key; unset = OPENAI_API_KEY (self-hosted endpoints need none)"
    )
    model: str = Field("gpt-4o-mini", min_length=1, description="Model agents call by default")
    provider: str = Field("openai", min_length=1, description="Provider name on cost records")
    pricing_file: Path | None = Field(
        None, description="YAML or JSON pricing table; unset = the packaged one"
    )
    timeout: float = Field(60.0, gt=0, description="Seconds one request may take")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    def openai_client(self) -> AsyncOpenAI:
        """A client for the configured endpoint; a self-hosted one gets a dummy key."""
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        if key is None and self.base_url is not None:
            key = os.environ.get("OPENAI_API_KEY") or NO_KEY
        return AsyncOpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout)

    def pricing(self) -> PricingTable:
        """The configured pricing file, or the packaged table."""
        if self.pricing_file is None:
            return PricingTable.default()
        return PricingTable.from_file(self.pricing_file)


@dataclass(frozen=True, slots=True)
class RunRef:
    """The run a call is made for: where its cost is booked, and what caused it."""

    tenant_id: str
    run_id: str
    project_id: str
    agent_name: str
    correlation_id: str | None = None
    causation_id: str | None = None


class LLMClient:
    """Chat completions that publish their cost (see the module doc)."""

    def __init__(
        self,
        openai: AsyncOpenAI,
        pricing: PricingTable,
        publisher: Publisher,
        *,
        provider: str,
        source: str,
    ) -> None:
        self.openai = openai
        self.pricing = pricing
        self.publisher = publisher
        self.provider = provider
        self.source = source
        self._cost_type = publisher.serializer.catalog.get("cost.recorded")
        self._warned: set[tuple[str, str]] = set()  # (what, model) already logged

    @classmethod
    def from_settings(
        cls, settings: LLMSettings, publisher: Publisher, *, source: str
    ) -> LLMClient:
        """A client for the endpoint, provider and prices of ``settings``."""
        return cls(
            settings.openai_client(),
            settings.pricing(),
            publisher,
            provider=settings.provider,
            source=source,
        )

    async def complete(
        self,
        run: RunRef,
        *,
        model: str,
        messages: list[dict[str, Any]],
        event_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> ChatCompletion:
        """One chat completion; returns once its cost is confirmed by Kafka.

        ``event_id`` fixes the cost event's id, so a retried step records once.
        """
        _refuse_stream_flag(kwargs)
        began = time.perf_counter()
        completion: ChatCompletion = await self._call(
            model,
            self.openai.chat.completions.create(model=model, messages=_params(messages), **kwargs),
        )
        await self._record(run, model, completion.usage, began, event_id)
        return completion

    async def stream(
        self,
        run: RunRef,
        *,
        model: str,
        messages: list[dict[str, Any]],
        event_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[ChatCompletionChunk]:
        """The answer's chunks; the cost is published (and confirmed) after the
        last one, before the iteration ends. Asks for ``include_usage``, so the
        last chunk may have no choices. Stopping early: close the generator
        (``contextlib.aclosing``) to have the cost published right away."""
        _refuse_stream_flag(kwargs)
        options = {**(kwargs.pop("stream_options", None) or {}), "include_usage": True}
        began = time.perf_counter()
        chunks: AsyncStream[ChatCompletionChunk] = await self._call(
            model,
            self.openai.chat.completions.create(
                model=model,
                messages=_params(messages),
                stream=True,
                stream_options=cast(Any, options),
                **kwargs,
            ),
        )
        iterator = aiter(chunks)
        usage: CompletionUsage | None = None
        try:
            while (chunk := await self._call(model, anext(iterator, None))) is not None:
                usage = chunk.usage or usage
                try:
                    yield chunk
                except GeneratorExit:  # the caller stopped early: usage comes last, read on
                    usage = await self._call(model, _last_usage(iterator, usage))
                    await self._record(run, model, usage, began, event_id)
                    raise
        finally:
            await chunks.close()
        await self._record(run, model, usage, began, event_id)

    async def _call(self, model: str, request: Awaitable[T]) -> T:
        """``request``'s result; a failure is counted and re-raised."""
        try:
            return await request
        except Exception:
            CALLS.labels(self.provider, model, "error").inc()
            raise

    async def _record(
        self,
        run: RunRef,
        model: str,
        usage: CompletionUsage | None,
        began: float,
        event_id: uuid.UUID | None,
    ) -> None:
        """Count the call and publish its cost, waiting for the confirmation."""
        seconds = time.perf_counter() - began
        input_tokens = usage.prompt_tokens if usage is not None else 0
        output_tokens = usage.completion_tokens if usage is not None else 0
        cost = self.pricing.cost_micros(model, input_tokens, output_tokens)
        if usage is None:
            cost = None
            USAGE_MISSING.labels(model).inc()
            self._warn_once("usage", model, "reported no token usage; recorded as 0 tokens")
        elif cost is None:
            UNPRICED.labels(model).inc()
            self._warn_once("price", model, "is not in the pricing table; recorded at cost 0")
        CALLS.labels(self.provider, model, "ok").inc()
        TOKENS.labels(self.provider, model, "input").inc(input_tokens)
        TOKENS.labels(self.provider, model, "output").inc(output_tokens)
        LATENCY.labels(self.provider, model).observe(seconds)
        event = build_event(
            self._cost_type,
            subject=run.run_id,
            tenant_id=run.tenant_id,
            data={
                "run_id": run.run_id,
                "project_id": run.project_id,
                "agent_name": run.agent_name,
                "provider": self.provider,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cost_micros": cost or 0,
                "latency_ms": round(seconds * 1000),
                "priced": cost is not None,
            },
            source=self.source,
            correlation_id=run.correlation_id,
            causation_id=run.causation_id,
            event_id=event_id,
        )
        await self.publisher.publish(event)

    def _warn_once(self, what: str, model: str, message: str) -> None:
        if (what, model) not in self._warned:
            self._warned.add((what, model))
            log.warning("LLM model %r %s", model, message)


async def _last_usage(
    chunks: AsyncIterator[ChatCompletionChunk], usage: CompletionUsage | None
) -> CompletionUsage | None:
    """Read the rest of a stream, unseen, for its usage (the last chunk carries it)."""
    async for chunk in chunks:
        usage = chunk.usage or usage
    return usage


def _refuse_stream_flag(kwargs: dict[str, Any]) -> None:
    if "stream" in kwargs:
        raise ValueError("pass no stream= argument: use LLMClient.stream() to stream")


def _params(messages: list[dict[str, Any]]) -> list[ChatCompletionMessageParam]:
    """The openai client's message type: plain dicts are what it sends."""
    return cast(list[ChatCompletionMessageParam], messages)
