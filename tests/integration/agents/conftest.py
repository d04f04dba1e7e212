"""One private pipeline and one LLM stub for every agent test (tests isolate by tenant)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ledgerbus.llm_stub import LLMStub, ServedStub, serve
from tests.conftest import StackUnderTest
from tests.support.pipeline import Pipeline, open_pipeline


@pytest.fixture(scope="package")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(stack, registry_url, tmp_path_factory.mktemp("agents")) as running:
        yield running


def reply(messages: list[dict[str, object]]) -> str:
    """Deterministic, so tests can count its tokens."""
    return f"done: {len(messages)} messages read"


@pytest.fixture(scope="package")
async def llm() -> AsyncIterator[ServedStub]:
    async with serve(stub=LLMStub(reply)) as served:
        yield served
