"""``ledgerbus demo``: one agent workforce story, told only through the gateway.

A Developer run is requested for a fresh project with a budget; the developer
calls the LLM (cost recorded), hands off to the QA tester, who asks for an
approval that the demo grants; a webhook to a receiver the demo serves is
delivered and its signature checked; the audit chain verifies. A second run on
a project with a tiny budget is rejected.

Everything is observed as a client sees it: the tenant's archived events, read
back through ``GET /v1/audit/events`` from where the demo began. So each
timeline line names events (type and id) that are in the store, and a step
that does not happen within its timeout fails the demo with what was missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

T = TypeVar("T")

POLL_SECONDS = 0.25
#: The types the story follows; heartbeats and the rest of the tenant's traffic stay unread.
FOLLOWED = (
    "budget.set",
    "webhook.subscribed",
    "webhook.deleted",
    "webhook.delivery_*",
    "agent.run_*",
    "agent.started",
    "agent.handoff",
    "agent.completed",
    "agent.failed",
    "cost.recorded",
    "approval.*",
)
BUDGET_MICROS = 5_000_000
ESTIMATE_MICROS = 200_000
TINY_BUDGET_MICROS = 1
TINY_ESTIMATE_MICROS = 1_000
TASK = "add input validation to the signup form"


class DemoFailed(Exception):
    """A step of the story did not happen; the message says which and what was seen."""


def usd(micros: int) -> str:
    return f"{micros / 1_000_000:.6f} USD"


@dataclass(frozen=True)
class Seen:
    """One archived event as ``GET /v1/audit/events`` showed it."""

    position: int
    id: str
    type: str
    time: datetime
    data: dict[str, Any]

    @classmethod
    def of(cls, line: dict[str, Any]) -> Seen:
        return cls(
            position=line["position"],
            id=line["id"],
            type=line["type"],
            time=datetime.fromisoformat(line["time"]),
            data=line["data"],
        )


async def until(what: str, probe: Callable[[], Awaitable[T | None]], timeout: float) -> T:
    """``probe()``'s first answer that is not None, polling; DemoFailed naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


class Gateway:
    """The HTTP API as the demo uses it: an answer other than the expected one fails the step."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def call(
        self, method: str, path: str, what: str, *, expect: tuple[int, ...] = (200,), **kw: Any
    ) -> httpx.Response:
        try:
            response = await self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise DemoFailed(f"{what}: {method} {path} got no answer: {exc!r}") from None
        if response.status_code not in expect:
            raise DemoFailed(
                f"{what}: {method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response

    async def json(self, method: str, path: str, what: str, **kw: Any) -> Any:
        return (await self.call(method, path, what, **kw)).json()


class Feed:
    """The tenant's followed events from ``next_position`` on, read as they are archived.

    A run the story ``watch``es that fails or is rejected ends any wait at once
    with the reason, rather than a timeout.
    """

    def __init__(self, gateway: Gateway, timeout: float) -> None:
        self.gateway = gateway
        self.next_position = 1
        self.timeout = timeout
        self.seen: list[Seen] = []
        self.watched: set[str] = set()

    def watch(self, run_id: str) -> None:
        self.watched.add(run_id)

    async def wait(self, what: str, event_type: str, **fields: Any) -> Seen:
        """The first event of ``event_type`` whose data has ``fields``."""

        def matches(event: Seen) -> bool:
            return event.type == event_type and all(
                event.data.get(name) == value for name, value in fields.items()
            )

        async def found() -> Seen | None:
            await self._read()
            for event in self.seen:
                self._check(event)
            return next((event for event in self.seen if matches(event)), None)

        return await until(f"{what} ({event_type})", found, self.timeout)

    async def _read(self) -> None:
        while True:
            response = await self.gateway.call(
                "GET",
                "/v1/audit/events",
                "reading the audit log",
                params={"from_position": self.next_position, "types": ",".join(FOLLOWED)},
            )
            more = False
            for text in response.text.splitlines():
                line = json.loads(text)
                if "error" in line:
                    raise DemoFailed(f"reading the audit log: {line['error']}")
                if "next_from_position" in line:
                    self.next_position, more = line["next_from_position"], True
                    continue
                event = Seen.of(line)
                self.seen.append(event)
                self.next_position = event.position + 1
            if not more:
                return

    def _check(self, event: Seen) -> None:
        if event.data.get("run_id") not in self.watched:
            return
        if event.type == "agent.failed":
            data = event.data
            raise DemoFailed(
                f"{data['agent_name']} failed run {data['run_id']} ({data['reason']}): "
                f"{data['error_message']} [agent.failed {event.id}]"
            )
        if event.type == "agent.run_rejected":
            raise DemoFailed(
                f"run {event.data['run_id']} was rejected ({event.data['reason']}): "
                f"{event.data.get('detail')} [agent.run_rejected {event.id}]"
            )


class Timeline:
    """Prints one line per step as it happens: UTC time, seconds since the start, what
    happened, and ``[type id]`` of each event that shows it."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.began = time.monotonic()
        echo("event time UTC  seen at  step  [type id] of each event in GET /v1/audit/events")

    def step(self, text: str, *events: Seen) -> None:
        at = events[0].time if events else datetime.now(UTC)
        stamp = at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"
        refs = "".join(f"  [{event.type} {event.id}]" for event in events)
        self.echo(f"{stamp} {time.monotonic() - self.began:+7.2f}s  {text}{refs}")


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    webhook_id: str
    event_id: str | None
    event_type: str | None
    verified: bool


class Receiver:
    """The webhook endpoint the demo serves: checks each request's Standard Webhooks
    signature with the secret the gateway handed out (401 when it does not verify)."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.received: list[Received] = []
        self.app = Starlette(routes=[Route("/hooks", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        if self.secret is None:  # subscribed but the create answer not read yet: retried
            return Response(status_code=503)
        body = await request.body()
        try:
            document = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            document = None
        verified = isinstance(document, dict)
        self.received.append(
            Received(
                request.headers.get("webhook-id", ""),
                document.get("id") if verified else None,
                document.get("type") if verified else None,
                verified,
            )
        )
        return Response(status_code=200 if verified else 401)

    def delivered(self, event_ids: set[str]) -> Received | None:
        return next(
            (r for r in self.received if r.verified and r.event_id in event_ids),
            None,
        )


@asynccontextmanager
async def serve_receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """The receiver on a free loopback port, and its URL, for the block's duration."""
    receiver = Receiver()
    config = uvicorn.Config(
        receiver.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # start-up failed: raise why
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield receiver, f"http://127.0.0.1:{port}/hooks"
    finally:
        server.should_exit = True
        await serving


class Story:
    """The demo's steps, in order; ``project`` is fresh per run so the story repeats
    on the same stack."""

    def __init__(self, gateway: Gateway, timeline: Timeline, timeout: float) -> None:
        self.gateway = gateway
        self.timeline = timeline
        self.timeout = timeout
        self.project = f"demo-{uuid.uuid4().hex[:8]}"
        self.feed = Feed(gateway, timeout)

    async def run(self) -> None:
        await self.audit_before()
        async with serve_receiver() as (receiver, url):
            await self.set_budget(self.project, BUDGET_MICROS)
            webhook_id = await self.subscribe(receiver, url)
            try:
                completed = await self.developer_chain()
                await self.delivery(receiver, webhook_id, completed)
                await self.verify_audit()
                await self.over_budget()
            except BaseException:
                # the receiver goes away with the demo: do not leave an endpoint failing
                with contextlib.suppress(DemoFailed):
                    await self.gateway.call(*self._deletion(webhook_id))
                raise
            await self.unsubscribe(webhook_id)

    async def audit_before(self) -> None:
        verified = await self.gateway.json("GET", "/v1/audit/verify", "verifying the audit chain")
        if not verified["ok"]:
            raise DemoFailed(f"the audit chain is already broken: {verified}")
        self.feed.next_position = verified["length"] + 1
        self.timeline.step(
            f"audit chain intact before the demo: {verified['length']} events; "
            f"following from position {self.feed.next_position}"
        )

    async def set_budget(self, project: str, micros: int) -> None:
        answer = await self.gateway.json(
            "PUT",
            f"/v1/budgets/{project}",
            f"setting the budget of {project}",
            json={"amount_micros": micros},
            expect=(202,),
        )
        event = await self.feed.wait(f"the budget of {project}", "budget.set", project_id=project)
        if event.id != answer["event_id"]:
            raise DemoFailed(f"budget.set {answer['event_id']} is not the one archived: {event}")

        async def applied() -> bool | None:
            state = await self.gateway.json(
                "GET", f"/v1/budgets/{project}", f"reading the budget of {project}"
            )
            return True if state["amount_micros"] == micros else None

        await until(f"the budget processor to apply the budget of {project}", applied, self.timeout)
        self.timeline.step(f"budget of {usd(micros)} set and applied for project {project}", event)

    async def subscribe(self, receiver: Receiver, url: str) -> str:
        created = await self.gateway.json(
            "POST",
            "/v1/webhooks",
            "registering the demo's webhook",
            json={
                "url": url,
                "event_types": ["agent.completed"],
                "description": f"ledgerbus demo, project {self.project}",
            },
            expect=(201,),
        )
        receiver.secret = created["secret"]
        webhook_id: str = created["webhook_id"]
        event = await self.feed.wait(
            "the webhook subscription", "webhook.subscribed", webhook_id=webhook_id
        )
        self.timeline.step(f"webhook {webhook_id} sends agent.completed to {url}", event)
        return webhook_id

    async def request_run(self, project: str, estimate: int) -> tuple[str, Seen]:
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        answer = await self.gateway.json(
            "POST",
            "/v1/commands",
            "requesting a Developer run",
            json={
                "type": "agent.run_requested",
                "subject": run_id,
                "data": {
                    "run_id": run_id,
                    "project_id": project,
                    "agent_name": "developer",
                    "task": TASK,
                    "risk_level": "low",
                    "cost_estimate_micros": estimate,
                },
            },
            expect=(202,),
        )
        event = await self.feed.wait(
            f"run {run_id} requested", "agent.run_requested", run_id=run_id
        )
        if event.id != answer["id"]:
            raise DemoFailed(f"agent.run_requested {answer['id']} is not the one archived")
        return run_id, event

    async def developer_chain(self) -> list[Seen]:
        """Developer → LLM → handoff → QA → approval → both completed; their completions."""
        step, feed = self.timeline.step, self.feed
        run_id, requested = await self.request_run(self.project, ESTIMATE_MICROS)
        feed.watch(run_id)
        step(f"Developer run {run_id} requested: {TASK!r}", requested)
        await self.accepted_and_started(run_id, "developer")
        await self.llm_call(run_id, "developer")
        handoff = await feed.wait("the developer's handoff", "agent.handoff", run_id=run_id)
        qa_run = handoff.data["handoff_run_id"]
        feed.watch(qa_run)
        qa_requested = await feed.wait("the QA run", "agent.run_requested", run_id=qa_run)
        step(
            f"developer handed off (sealed) to {qa_requested.data['agent_name']} as run {qa_run}",
            handoff,
            qa_requested,
        )
        developer_done = await self.completed(run_id, "developer")
        await self.accepted_and_started(qa_run, "qa-tester")
        await self.llm_call(qa_run, "qa-tester")
        asked = await feed.wait("the QA approval request", "approval.requested", run_id=qa_run)
        approval_id = asked.data["approval_id"]
        step(
            f"qa-tester asks approval {approval_id} to {asked.data['action']!r} "
            f"(risk {asked.data['risk_level']})",
            asked,
        )
        await self.approve(approval_id)
        qa_done = await self.completed(qa_run, "qa-tester")
        return [developer_done, qa_done]

    async def accepted_and_started(self, run_id: str, agent: str) -> None:
        accepted = await self.feed.wait(
            f"the budget decision on run {run_id}", "agent.run_accepted", run_id=run_id
        )
        started = await self.feed.wait(
            f"{agent} to start run {run_id}", "agent.started", run_id=run_id
        )
        self.timeline.step(
            f"run {run_id} accepted (reserved {accepted.data['reserved_micros']} micro-USD), "
            f"{agent} started it on {started.data['instance_id']}",
            accepted,
            started,
        )

    async def llm_call(self, run_id: str, agent: str) -> None:
        cost = await self.feed.wait(
            f"{agent}'s LLM call in run {run_id}", "cost.recorded", run_id=run_id
        )
        data = cost.data
        via = (
            "using the local OpenAI-compatible stub (no LLM configured)"
            if data["provider"] == "stub"
            else f"via {data['provider']}"
        )
        self.timeline.step(
            f"{agent} called the LLM {data['model']} {via}: {data['input_tokens']} in + "
            f"{data['output_tokens']} out tokens = {data['cost_micros']} micro-USD "
            f"({data['latency_ms']} ms)",
            cost,
        )

    async def approve(self, approval_id: str) -> None:
        await self.gateway.call(
            "POST",
            f"/v1/approvals/{approval_id}/approve",
            f"approving {approval_id}",
            json={"reason": "approved by ledgerbus demo"},
            expect=(200, 202),
        )
        submitted = await self.feed.wait(
            "the demo's decision", "approval.decision_submitted", approval_id=approval_id
        )
        approved = await self.feed.wait(
            f"the verdict on {approval_id}", "approval.approved", approval_id=approval_id
        )
        self.timeline.step(
            f"the demo approved {approval_id} through the gateway (decider "
            f"{approved.data['decider']})",
            submitted,
            approved,
        )

    async def completed(self, run_id: str, agent: str) -> Seen:
        done = await self.feed.wait(
            f"{agent} to complete run {run_id}", "agent.completed", run_id=run_id
        )
        self.timeline.step(f"{agent} completed run {run_id} in {done.data['duration_ms']} ms", done)
        return done

    async def delivery(self, receiver: Receiver, webhook_id: str, completed: list[Seen]) -> None:
        ids = {event.id for event in completed}

        async def arrived() -> Received | None:
            return receiver.delivered(ids)

        got = await until(
            f"a signed agent.completed delivery of webhook {webhook_id} at the receiver",
            arrived,
            self.timeout,
        )
        logged = await self.feed.wait(
            f"the dispatcher's record of delivery {got.webhook_id}",
            "webhook.delivery_succeeded",
            delivery_id=got.webhook_id,
        )
        self.timeline.step(
            f"receiver got {got.event_type} {got.event_id} (webhook-id {got.webhook_id}); "
            "Standard Webhooks signature verified",
            logged,
        )

    async def verify_audit(self) -> None:
        verified = await self.gateway.json("GET", "/v1/audit/verify", "verifying the audit chain")
        if not verified["ok"]:
            raise DemoFailed(
                f"GET /v1/audit/verify: the chain breaks at position "
                f"{verified['first_bad_position']}: {verified['reason']} {verified['detail']}"
            )
        self.timeline.step(
            f"GET /v1/audit/verify ok: {verified['length']} events, head "
            f"{verified['head'][:16]}…, {verified['checkpoints_verified']} signed checkpoints"
        )

    async def over_budget(self) -> None:
        project = f"{self.project}-tiny"
        await self.set_budget(project, TINY_BUDGET_MICROS)
        run_id, requested = await self.request_run(project, TINY_ESTIMATE_MICROS)
        self.timeline.step(
            f"Developer run {run_id} requested on {project}, estimate {usd(TINY_ESTIMATE_MICROS)}",
            requested,
        )
        rejected = await self.feed.wait(
            f"the budget decision on run {run_id}", "agent.run_rejected", run_id=run_id
        )
        if rejected.data["reason"] != "budget_exceeded":
            raise DemoFailed(f"run {run_id} rejected for {rejected.data['reason']}, not budget")
        self.timeline.step(
            f"run {run_id} rejected: budget_exceeded ({rejected.data['detail']})", rejected
        )

    @staticmethod
    def _deletion(webhook_id: str) -> tuple[str, str, str]:
        return "DELETE", f"/v1/webhooks/{webhook_id}", "removing the demo's webhook"

    async def unsubscribe(self, webhook_id: str) -> None:
        await self.gateway.call(*self._deletion(webhook_id), expect=(204,))
        event = await self.feed.wait(
            "the webhook's removal", "webhook.deleted", webhook_id=webhook_id
        )
        self.timeline.step(
            f"webhook {webhook_id} removed (its receiver stops with the demo)", event
        )
