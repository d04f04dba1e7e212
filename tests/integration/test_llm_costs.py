"""The LLM client against the OpenAI-compatible stub over real HTTP, costs through real Kafka.

Stub usage counts words, and ``stub-model`` costs 1.25 / 2.50 USD per million
input / output tokens, so every expected cost below is worked out by hand.
One pipeline (archiver + streams worker) serves the module; each test has its
own tenant, so the budget processor's view of it is the test's alone.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk
from prometheus_client import REGISTRY
from pydantic import ValidationError

from consumers.llm import LLMClient, LLMSettings, RunRef
from consumers.pricing import PricingTable
from ledgerbus.llm_stub import LLMStub, ServedStub, serve
from schemas.models import Envelope
from streams.budgets import budget_status
from tests.conftest import StackUnderTest
from tests.support.approvals import wait_archived
from tests.support.budgets import of_tenant, set_budget, topic_records
from tests.support.pipeline import Pipeline, open_pipeline

MODEL = "stub-model"
#: 2 + 2 words in, 5 out: 4 x 1.25 + 5 x 2.50 = 17.5 micro-USD, rounded half up.
ASK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "count please"}]
ANSWER = "one two three four five"
ASK_COST = 18


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(stack, registry_url, tmp_path_factory.mktemp("llm")) as running:
        yield running


@pytest.fixture
async def served() -> AsyncIterator[ServedStub]:
    async with serve(stub=LLMStub(lambda messages: ANSWER)) as running:
        yield running


def client_for(pipeline: Pipeline, served: ServedStub) -> LLMClient:
    return LLMClient(
        AsyncOpenAI(base_url=served.url, api_key="test-key"),
        PricingTable.default(),
        pipeline.publisher,
        provider="stub",
        source="test.llm",
    )


def new_run(pipeline: Pipeline) -> RunRef:
    return RunRef(
        tenant_id=pipeline.new_tenant(),
        run_id=f"run-{uuid.uuid4().hex[:10]}",
        project_id="proj",
        agent_name="developer",
        correlation_id=str(uuid.uuid4()),
        causation_id=str(uuid.uuid4()),
    )


def cost_data(run: RunRef, **fields: Any) -> dict[str, Any]:
    """A cost record's expected data, latency aside."""
    return {
        "run_id": run.run_id,
        "project_id": run.project_id,
        "agent_name": run.agent_name,
        "provider": "stub",
        "model": MODEL,
        "priced": True,
        **fields,
    }


async def costs_of(pipeline: Pipeline, run: RunRef, count: int = 1) -> list[Envelope[Any]]:
    return await wait_archived(pipeline, run.tenant_id, count, "cost.recorded")


def without_latency(cost: Envelope[Any]) -> dict[str, Any]:
    data: dict[str, Any] = cost.data.model_dump()
    assert data.pop("latency_ms") >= 0
    return data


async def on_kafka(pipeline: Pipeline, run: RunRef) -> int:
    """How many cost records of the run's tenant Kafka holds right now."""
    return len(of_tenant(await topic_records(pipeline, "costs"), run.tenant_id))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_completion_cost_is_the_stub_tokens_times_the_price(
    pipeline: Pipeline, served: ServedStub
) -> None:
    run = new_run(pipeline)
    event_id = uuid.uuid4()
    answer = await client_for(pipeline, served).complete(
        run, model=MODEL, messages=ASK, event_id=event_id, temperature=0
    )

    assert answer.choices[0].message.content == ANSWER
    # Confirmed by Kafka before complete() returned, not merely handed over.
    assert await on_kafka(pipeline, run) == 1
    (cost,) = await costs_of(pipeline, run)
    assert without_latency(cost) == cost_data(
        run, input_tokens=4, output_tokens=5, cost_micros=ASK_COST
    )
    assert (cost.id, cost.subject, cost.source) == (event_id, run.run_id, "test.llm")
    assert (cost.correlation_id, cost.causation_id) == (run.correlation_id, run.causation_id)
    (call,) = served.stub.calls
    assert (call.model, call.stream, call.body["temperature"]) == (MODEL, False, 0)
    assert call.headers["authorization"] == "Bearer test-key"


async def test_stream_is_accounted_once_its_last_chunk_is_read(
    pipeline: Pipeline, served: ServedStub
) -> None:
    run = new_run(pipeline)
    ask = [{"role": "user", "content": [{"type": "text", "text": "stream this answer now"}]}]
    served.stub.reply = lambda messages: "alpha beta gamma"
    chunks: list[ChatCompletionChunk] = []
    # The caller's own include_usage=False is overridden: the cost needs the usage.
    async for chunk in client_for(pipeline, served).stream(
        run, model=MODEL, messages=ask, stream_options={"include_usage": False}
    ):
        chunks.append(chunk)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "alpha beta gamma"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert await on_kafka(pipeline, run) == 1
    (cost,) = await costs_of(pipeline, run)
    # 4 x 1.25 + 3 x 2.50 = 12.5, rounded half up.
    assert without_latency(cost) == cost_data(run, input_tokens=4, output_tokens=3, cost_micros=13)
    (call,) = served.stub.calls
    assert (call.stream, call.include_usage) == (True, True)


async def test_stream_left_early_is_still_accounted_in_full(
    pipeline: Pipeline, served: ServedStub
) -> None:
    run = new_run(pipeline)
    async with aclosing(
        client_for(pipeline, served).stream(run, model=MODEL, messages=ASK)
    ) as chunks:
        async for chunk in chunks:
            assert chunk.choices[0].delta.role == "assistant"
            break
    assert await on_kafka(pipeline, run) == 1
    (cost,) = await costs_of(pipeline, run)
    assert without_latency(cost) == cost_data(
        run, input_tokens=4, output_tokens=5, cost_micros=ASK_COST
    )


async def test_answers_without_usage_are_recorded_unpriced_at_zero(
    pipeline: Pipeline, served: ServedStub, caplog: pytest.LogCaptureFixture
) -> None:
    served.stub.send_usage = False
    client = client_for(pipeline, served)
    run = new_run(pipeline)
    before = metric("ledgerbus_llm_usage_missing_total", model=MODEL)

    await client.complete(run, model=MODEL, messages=ASK)
    chunks = [chunk async for chunk in client.stream(run, model=MODEL, messages=ASK)]

    assert all(chunk.usage is None for chunk in chunks)
    costs = await costs_of(pipeline, run, 2)
    unpriced = cost_data(run, input_tokens=0, output_tokens=0, cost_micros=0, priced=False)
    assert [without_latency(cost) for cost in costs] == [unpriced, unpriced]
    assert metric("ledgerbus_llm_usage_missing_total", model=MODEL) == before + 2
    warnings = [r for r in caplog.records if r.name == "ledgerbus.llm" and "usage" in r.message]
    assert len(warnings) == 1


async def test_unknown_model_costs_zero_with_a_metric_and_one_warning(
    pipeline: Pipeline, served: ServedStub, caplog: pytest.LogCaptureFixture
) -> None:
    model = f"mystery-{uuid.uuid4().hex[:6]}"
    client = client_for(pipeline, served)
    run = new_run(pipeline)

    for _ in range(2):
        await client.complete(run, model=model, messages=ASK)

    costs = await costs_of(pipeline, run, 2)
    expected = cost_data(
        run, model=model, input_tokens=4, output_tokens=5, cost_micros=0, priced=False
    )
    assert [without_latency(cost) for cost in costs] == [expected, expected]
    assert metric("ledgerbus_llm_unpriced_total", model=model) == 2
    assert metric("ledgerbus_llm_tokens_total", provider="stub", model=model, kind="input") == 8
    assert metric("ledgerbus_llm_calls_total", provider="stub", model=model, outcome="ok") == 2
    warnings = [r for r in caplog.records if r.name == "ledgerbus.llm" and model in r.message]
    assert len(warnings) == 1


async def test_a_failed_call_publishes_nothing_and_raises(
    pipeline: Pipeline, served: ServedStub
) -> None:
    model = f"failing-{uuid.uuid4().hex[:6]}"
    client = client_for(pipeline, served)
    run = new_run(pipeline)
    broken = [{"role": "user"}]  # no content: the server answers 400

    with pytest.raises(openai.BadRequestError) as refused:
        await client.complete(run, model=model, messages=broken)
    assert refused.value.status_code == 400
    assert refused.value.body == {
        "message": "messages[0].content must be a string or a list of text parts",
        "type": "invalid_request_error",
        "param": "messages[0]",
        "code": None,
    }
    with pytest.raises(openai.BadRequestError):
        async for _ in client.stream(run, model=model, messages=broken):
            pass
    with pytest.raises(ValueError, match=r"use LLMClient\.stream\(\)"):
        await client.complete(run, model=model, messages=ASK, stream=True)
    assert metric("ledgerbus_llm_calls_total", provider="stub", model=model, outcome="error") == 2
    assert served.stub.calls == []

    # A call that works afterwards is the tenant's only cost.
    await client.complete(run, model=MODEL, messages=ASK)
    (cost,) = await costs_of(pipeline, run)
    assert cost.data.model == MODEL
    assert await on_kafka(pipeline, run) == 1


async def test_budget_processor_sees_the_recorded_spend(
    pipeline: Pipeline, served: ServedStub
) -> None:
    run = new_run(pipeline)
    await set_budget(pipeline, run.tenant_id, run.project_id, 2 * ASK_COST - 1)
    client = client_for(pipeline, served)

    for _ in range(2):
        await client.complete(run, model=MODEL, messages=ASK)

    (exceeded,) = await wait_archived(pipeline, run.tenant_id, 1, "project.budget_exceeded")
    assert (exceeded.data.spent_micros, exceeded.data.run_id) == (2 * ASK_COST, run.run_id)
    async with pipeline.pool.acquire() as conn:
        view = await budget_status(conn, run.tenant_id, run.project_id, datetime.now(UTC))
    assert (view.spent_micros, view.status) == (2 * ASK_COST, "exceeded")


async def test_settings_configure_endpoint_key_provider_and_prices(
    pipeline: Pipeline, served: ServedStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  stub-model: {input: 10, output: 100}\n")
    for name, value in {
        "BASE_URL": served.url,
        "API_KEY": "secret-1",
        "MODEL": MODEL,
        "PROVIDER": "ollama",
        "PRICING_FILE": str(prices),
    }.items():
        monkeypatch.setenv(f"LEDGERBUS_LLM_{name}", value)
    settings = LLMSettings()
    client = LLMClient.from_settings(settings, pipeline.publisher, source="test.llm")
    run = new_run(pipeline)

    await client.complete(run, model=settings.model, messages=ASK)

    (cost,) = await costs_of(pipeline, run)
    assert without_latency(cost) == cost_data(
        run, provider="ollama", input_tokens=4, output_tokens=5, cost_micros=540
    )
    assert served.stub.calls[0].headers["authorization"] == "Bearer secret-1"


async def test_self_hosted_endpoint_needs_no_key(
    served: ServedStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    answer = (
        await LLMSettings(base_url=served.url)
        .openai_client()
        .chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    )
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1, 5)
    assert served.stub.calls[0].headers["authorization"] == "Bearer no-key"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("BASE_URL", "ftp://models.example", "not an http"),
        ("BASE_URL", "localhost:11434", "not an http"),
        ("TIMEOUT", "0", "greater than 0"),
        ("MODEL", "", "at least 1 character"),
    ],
)
def test_bad_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(f"LEDGERBUS_LLM_{name}", value)
    with pytest.raises(ValidationError, match=problem):
        LLMSettings()


async def test_stub_lists_models_and_refuses_bad_requests(served: ServedStub) -> None:
    async with httpx.AsyncClient(base_url=served.url) as http:
        models = (await http.get("/models")).json()
        assert [model["id"] for model in models["data"]] == [MODEL]
        bad = {
            "not json": b"{",
            "model": b'{"messages": [{"role": "user", "content": "x"}]}',
            "messages": b'{"model": "m", "messages": []}',
            "stream": b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
            b'"stream": "yes"}',
            "stream_options": b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
            b'"stream_options": {"include_usage": true}}',
        }
        for param, body in bad.items():
            answer = await http.post("/chat/completions", content=body)
            assert answer.status_code == 400, param
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == (None if param == "not json" else param)
    assert served.stub.calls == []


async def test_stub_default_reply_summarises_the_last_user_message() -> None:
    async with serve() as running:
        answer = await AsyncOpenAI(base_url=running.url, api_key="k").chat.completions.create(
            model="any",
            messages=[
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {
                    "role": "user",
                    "content": "please summarise the quarterly report for the board by friday",
                },
            ],
        )
    assert answer.choices[0].message.content == (
        "Noted: please summarise the quarterly report for the board"
    )
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (14, 9)
