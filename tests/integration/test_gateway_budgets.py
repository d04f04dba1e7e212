"""Budgets over real HTTP, applied by the real budget processor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import StackUnderTest
from tests.support.approvals import wait_archived
from tests.support.archive import eventually
from tests.support.budgets import cost
from tests.support.gateway_deployment import Deployment, open_deployment


@pytest.fixture(scope="module")
async def deployment(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    log_dir = tmp_path_factory.mktemp("gateway-budgets")
    async with open_deployment(stack, registry_url, log_dir) as running:
        yield running


async def put_budget(
    client: httpx.AsyncClient, project: str, body: dict[str, Any]
) -> dict[str, Any]:
    """PUT a budget (202), then what GET shows once the budget processor applied it."""
    answer = await client.put(f"/v1/budgets/{project}", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == answer.json()["href"] == f"/v1/budgets/{project}"
    shown: list[dict[str, Any]] = []

    async def applied() -> bool:
        shown[:] = [(await client.get(f"/v1/budgets/{project}")).json()]
        return bool(shown[0]["amount_micros"] == body["amount_micros"])

    await eventually(applied, timeout=30, interval=0.1)
    return shown[0]


async def test_a_budget_set_over_http_is_shown(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    token = await deployment.gateway.key(tenant, "manager")
    body = {"amount_micros": 5_000_000, "period": "monthly", "timezone": "Europe/Paris"}
    async with deployment.gateway.client(token) as client:
        shown = await put_budget(client, "proj-a", body)
    assert shown["amount_micros"] == shown["remaining_micros"] == 5_000_000
    assert (shown["period"], shown["timezone"], shown["status"]) == (
        "monthly",
        "Europe/Paris",
        "ok",
    )
    start = datetime.fromisoformat(shown["period_start"])
    assert start.utcoffset() is not None and start <= datetime.now(UTC)
    [event] = await wait_archived(deployment.pipeline, tenant, 1, "budget.set")
    assert (event.subject, event.source) == ("proj-a", "gateway")
    assert event.data.set_by == token.split("_")[1]  # the API key's id is its subject


async def test_costs_show_as_spend(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    async with deployment.client(tenant, "manager") as client:
        await put_budget(client, "proj-b", {"amount_micros": 1_000_000})
        await deployment.pipeline.publisher.publish_many(
            [cost(tenant, "proj-b", "run-1", 300_000), cost(tenant, "proj-b", "run-2", 550_000)]
        )

        async def spent() -> bool:
            return bool((await client.get("/v1/budgets/proj-b")).json()["spent_micros"] == 850_000)

        await eventually(spent, timeout=30, interval=0.1)
        shown = (await client.get("/v1/budgets/proj-b")).json()
    assert (shown["remaining_micros"], shown["status"], shown["period_start"]) == (
        150_000,
        "warning",
        None,
    )


async def test_a_project_without_a_budget_shows_spend_and_no_budget(
    deployment: Deployment,
) -> None:
    tenant = deployment.pipeline.new_tenant()
    await deployment.pipeline.publisher.publish(cost(tenant, "proj-c", "run-1", 42))
    async with deployment.client(tenant, "viewer") as client:

        async def spent() -> bool:
            return bool((await client.get("/v1/budgets/proj-c")).json()["spent_micros"] == 42)

        await eventually(spent, timeout=30, interval=0.1)
        shown = (await client.get("/v1/budgets/proj-c")).json()
        never_heard_of = await client.get("/v1/budgets/nobody-knows")
    assert (shown["status"], shown["amount_micros"], shown["remaining_micros"]) == (
        "no_budget",
        None,
        None,
    )
    assert never_heard_of.status_code == 200
    assert never_heard_of.json()["status"] == "no_budget"
    assert never_heard_of.json()["spent_micros"] == 0


async def test_bad_budgets_are_refused_and_nothing_is_published(deployment: Deployment) -> None:
    tenant = deployment.pipeline.new_tenant()
    cases = [
        ({"amount_micros": -1}, "amount_micros"),
        ({"amount_micros": "lots"}, "amount_micros"),
        ({"amount_micros": 2**63}, "amount_micros"),
        ({"amount_micros": 10, "period": "fortnightly"}, "period"),
        ({"amount_micros": 10, "owner": "me"}, "owner"),
        ({}, "amount_micros"),
    ]
    async with deployment.client(tenant, "manager") as client:
        for body, field in cases:
            answer = await client.put("/v1/budgets/proj-d", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert [e["path"] for e in answer.json()["errors"]] == [f"body.{field}"], body
        # Rules of the budgets themselves, in the words of streams.budgets.check_budget.
        for body, detail in [
            ({"amount_micros": 10, "timezone": "Mars/Olympus_Mons"}, "'Mars/Olympus_Mons'"),
            ({"amount_micros": 10, "timezone": "Europe"}, "unknown timezone 'Europe'"),
            ({"amount_micros": 10, "period": "unknown"}, "unknown budget period 'unknown'"),
        ]:
            answer = await client.put("/v1/budgets/proj-d", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert detail in answer.json()["detail"]
        assert (await client.put("/v1/budgets/%00", json={"amount_micros": 1})).status_code == 422
        shown = (await client.get("/v1/budgets/proj-d")).json()
    assert shown["status"] == "no_budget"
    assert await deployment.published("budgets", tenant) == []


async def test_reading_needs_events_read_and_setting_needs_budgets_manage(
    deployment: Deployment,
) -> None:
    tenant = deployment.pipeline.new_tenant()
    async with deployment.client(tenant, "viewer") as viewer:
        refused = await viewer.put("/v1/budgets/proj-e", json={"amount_micros": 1})
        assert refused.status_code == 403
        assert refused.json()["permission"] == "budgets:manage"
        assert (await viewer.get("/v1/budgets/proj-e")).status_code == 200
    async with deployment.client(tenant, "developer") as developer:
        assert (
            await developer.put("/v1/budgets/proj-e", json={"amount_micros": 1})
        ).status_code == 403
    async with deployment.gateway.client() as anonymous:
        assert (await anonymous.get("/v1/budgets/proj-e")).status_code == 401
    assert await deployment.published("budgets", tenant) == []


async def test_a_tenant_neither_sees_nor_changes_another_tenants_budget(
    deployment: Deployment,
) -> None:
    owner, other = deployment.pipeline.new_tenant(), deployment.pipeline.new_tenant()
    async with deployment.client(owner, "manager") as client:
        await put_budget(client, "shared-name", {"amount_micros": 700})
    async with deployment.client(other, "admin") as intruder:
        seen = (await intruder.get("/v1/budgets/shared-name")).json()
        assert (seen["status"], seen["amount_micros"]) == ("no_budget", None)
        await put_budget(intruder, "shared-name", {"amount_micros": 9})
    async with deployment.client(owner, "viewer") as client:
        assert (await client.get("/v1/budgets/shared-name")).json()["amount_micros"] == 700
