"""Guards that need their own worker settings: the SSRF guard with no allow-list, and
auto-disabling an endpoint that keeps failing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import StackUnderTest
from tests.support.archive import eventually
from tests.support.pipeline import Pipeline, open_pipeline
from tests.support.receiver import Answer, Receiver
from tests.support.webhooks import (
    ALLOW_LOOPBACK,
    FAST_RETRIES,
    publish_budgets,
    streams_worker,
    subscribe,
)


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(
        stack, registry_url, tmp_path_factory.mktemp("guard"), workers=0, extra_env=FAST_RETRIES
    ) as running:
        yield running


async def test_ssrf_guard_blocks_private_destinations_by_default(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    async with streams_worker(pipeline):  # no LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS
        tenant = pipeline.new_tenant()
        loopback = await subscribe(pipeline, receiver, tenant)
        metadata = await subscribe(
            pipeline, receiver, tenant, url="http://169.254.169.254/latest/meta-data/"
        )
        private = await subscribe(pipeline, receiver, tenant, url="http://10.1.2.3:8080/hook")
        await publish_budgets(pipeline, tenant, 1)

        async def all_dead() -> bool:
            return len(await pipeline.archived(tenant, "webhook.delivery_dead_lettered")) == 3

        await eventually(all_dead, timeout=30)
    failures = await pipeline.archived(tenant, "webhook.delivery_failed")
    errors = {(e.data.webhook_id, e.data.status_code, e.data.error) for e in failures}
    assert len(failures) == 15  # five attempts each, every one refused
    assert errors == {
        (
            loopback.webhook_id,
            None,
            "SSRF guard: 127.0.0.1 is a loopback address; "
            "allow it with LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS or _ALLOWED_HOSTS",
        ),
        (
            metadata.webhook_id,
            None,
            "SSRF guard: 169.254.169.254 is a cloud metadata address; "
            "allow it with LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS or _ALLOWED_HOSTS",
        ),
        (
            private.webhook_id,
            None,
            "SSRF guard: 10.1.2.3 is a private address; "
            "allow it with LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS or _ALLOWED_HOSTS",
        ),
    }
    assert receiver.received(loopback.path) == []


async def test_an_endpoint_failing_too_long_is_disabled(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    async with streams_worker(pipeline, **ALLOW_LOOPBACK, LEDGERBUS_WEBHOOK_DISABLE_AFTER="1s"):
        tenant = pipeline.new_tenant()
        endpoint = await subscribe(pipeline, receiver, tenant)
        receiver.answer(endpoint.path, Answer(500), times=50)
        await publish_budgets(pipeline, tenant, 1)

        async def disabled() -> bool:
            return bool(await pipeline.archived(tenant, "webhook.updated"))

        await eventually(disabled, timeout=30)
        [update] = await pipeline.archived(tenant, "webhook.updated")
        assert update.data.enabled is False
        assert (update.data.reason or "").startswith("failing without a success since ")
        failed = await pipeline.archived(tenant, "webhook.delivery_failed")
        assert (update.time - failed[0].time).total_seconds() >= 1.0  # failing for 1 s
        assert await pipeline.archived(tenant, "webhook.delivery_dead_lettered") == []
        attempts = len(receiver.received(endpoint.path))
        assert attempts < 5  # disabled before the schedule ran out
    assert len(receiver.received(endpoint.path)) == attempts  # and held since
