"""Recording attempts: one transaction turns a batch of HTTP outcomes into queue state and events.

For each outcome whose lease is still ours (another worker may have retaken an
attempt that took too long; then its outcome is the one that counts), the row
moves to succeeded, failed with the next attempt due, or dead; the attempt is
announced as ``webhook.delivery_succeeded`` / ``webhook.delivery_failed`` (plus
``webhook.delivery_dead_lettered`` after the last one). An endpoint that
answered ``410 Gone``, or has failed continuously for ``disable_after``, is
disabled with ``webhook.updated`` (enabled = false, reason), applied at once
to the subscriptions so no further attempt is claimed for it. The events are
kept in the outbox in the same transaction; the announcer publishes them
after the commit.

Event ids derive from the delivery id and the attempt number, so an outcome
is never announced under two ids.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent
from schemas.models import Envelope
from streams.context import StreamsContext, derived_id
from streams.webhooks import health, outbox, policy, queue, subscriptions
from streams.webhooks.metrics import ATTEMPT_SECONDS, DELIVERIES, DISABLED
from streams.webhooks.queue import Claim, Leased, Update
from streams.webhooks.settings import WebhookSettings

log = logging.getLogger("ledgerbus.webhooks")

SOURCE = "ledgerbus.webhooks"
NAME = "webhooks"


@dataclass(frozen=True, slots=True)
class Outcome:
    """An attempt made under a claim, and what it got."""

    claim: Claim
    result: policy.Result


class Recorder:
    """Records batches of outcomes; see the module doc."""

    def __init__(self, context: StreamsContext, settings: WebhookSettings) -> None:
        self.context = context
        self.settings = settings
        self.subscriptions = subscriptions.WebhookSubscriptions()

    async def record(self, outcomes: Sequence[Outcome]) -> list[Envelope[Any]]:
        """Commit the outcomes; returns the events to publish (already in the outbox)."""
        decided: list[Envelope[Any]] = []

        async def decide(conn: Connection) -> list[Envelope[Any]]:
            decided[:] = await self._decide(conn, outcomes)
            return []  # published by the caller, after waking the dispatcher

        await self.context.decide(NAME, decide)
        for outcome in outcomes:
            ATTEMPT_SECONDS.observe(outcome.result.latency_ms / 1000)
        for event in decided:
            if event.type in _OUTCOMES:
                DELIVERIES.labels(_OUTCOMES[event.type]).inc()
        return decided

    async def _decide(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[Envelope[Any]]:
        leased = await queue.lock_leased(conn, [o.claim.delivery_id for o in outcomes])
        ours = [
            (o, leased[o.claim.delivery_id])
            for o in outcomes
            if o.claim.delivery_id in leased
            and leased[o.claim.delivery_id].lease_token == o.claim.token
        ]
        updates: list[Update] = []
        events: list[Envelope[Any]] = []
        by_endpoint: dict[tuple[str, str], list[tuple[Outcome, Leased]]] = defaultdict(list)
        for outcome, row in ours:
            update, announced = self._attempted(row, outcome.result)
            updates.append(update)
            events += announced
            by_endpoint[(row.tenant_id, row.webhook_id)].append((outcome, row))
        for (tenant_id, webhook_id), attempts in sorted(by_endpoint.items()):
            events += await self._judge_endpoint(conn, tenant_id, webhook_id, attempts)
        if updates:
            await queue.record(conn, updates)
        if events:
            await outbox.hold(conn, events, max(o.result.finished_at for o, _ in ours))
        return events

    def _attempted(self, row: Leased, result: policy.Result) -> tuple[Update, list[Envelope[Any]]]:
        """The row's next state and the events announcing this attempt."""
        attempt = row.attempts + 1
        common = {
            "delivery_id": row.delivery_id,
            "webhook_id": row.webhook_id,
            "source_event_id": row.event_id,
            "source_event_type": row.event_type,
        }
        this_attempt = {
            **common,
            "attempt": attempt,
            "latency_ms": result.latency_ms,
            "response_body": result.response_body,
        }
        if result.succeeded:
            assert result.status_code is not None
            event = self._event(
                "webhook.delivery_succeeded",
                row,
                f"attempt/{attempt}",
                result.finished_at,
                {**this_attempt, "status_code": result.status_code},
            )
            return self._update(row, queue.SUCCEEDED, attempt, None, result), [event]
        wait = policy.next_wait(self.settings, attempt - row.round_start, result.retry_after)
        next_at = None if wait is None else result.finished_at + timedelta(seconds=wait)
        events = [
            self._event(
                "webhook.delivery_failed",
                row,
                f"attempt/{attempt}",
                result.finished_at,
                {
                    **this_attempt,
                    "status_code": result.status_code,
                    "error": result.error,
                    "next_attempt_at": next_at,
                },
            )
        ]
        if next_at is not None:
            return self._update(row, queue.FAILED, attempt, next_at, result), events
        events.append(
            self._event(
                "webhook.delivery_dead_lettered",
                row,
                f"dead/{attempt}",
                result.finished_at,
                {
                    **common,
                    "attempts": attempt,
                    "last_status_code": result.status_code,
                    "last_error": result.error,
                },
            )
        )
        return self._update(row, queue.DEAD, attempt, None, result), events

    @staticmethod
    def _update(
        row: Leased, status: str, attempt: int, next_at: datetime | None, result: policy.Result
    ) -> Update:
        return Update(
            row.delivery_id,
            status,
            attempt,
            next_at,
            result.status_code,
            result.error,
            result.finished_at,
        )

    async def _judge_endpoint(
        self,
        conn: Connection,
        tenant_id: str,
        webhook_id: str,
        attempts: list[tuple[Outcome, Leased]],
    ) -> list[Envelope[Any]]:
        """Fold the endpoint's attempts into its health; disable it if it is gone or has
        failed for too long (once: the subscription row is locked and checked)."""
        results = [outcome.result for outcome, _ in attempts]
        failing_since = await health.note(
            conn, tenant_id, webhook_id, [(r.finished_at, r.succeeded) for r in results]
        )
        latest = max(r.finished_at for r in results)
        if any(r.gone for r in results):
            reason, label = "endpoint answered 410 Gone", "gone"
        elif failing_since is not None and (
            (latest - failing_since).total_seconds() >= self.settings.disable_after
        ):
            reason = f"failing without a success since {failing_since.isoformat()}"
            label = "failing"
        else:
            return []
        current = await subscriptions.locked(conn, tenant_id, webhook_id)
        if current is None or not current.enabled or current.deleted:
            return []
        row = max(attempts, key=lambda pair: pair[0].result.finished_at)[1]
        event = self._event(
            "webhook.updated",
            row,
            f"disable/{row.attempts + 1}",
            latest,
            {"webhook_id": webhook_id, "enabled": False, "reason": reason},
        )
        await self.subscriptions.apply(conn, ProjectedEvent(0, event))
        DISABLED.labels(label).inc()
        log.warning("webhook %s of %s disabled: %s", webhook_id, tenant_id, reason)
        return [event]

    def _event(
        self, event_type: str, row: Leased, kind: str, time: datetime, data: dict[str, Any]
    ) -> Envelope[Any]:
        """A ``webhook.*`` event about the row's endpoint (its subject), with a derived id."""
        return self.context.catalog.get(event_type).envelope_model.model_validate(
            {
                "id": derived_id(row.delivery_id, kind),
                "type": event_type,
                "source": SOURCE,
                "subject": row.webhook_id,
                "tenant_id": row.tenant_id,
                "time": time,
                "correlation_id": row.correlation_id or str(row.event_id),
                "causation_id": str(row.event_id),
                "data": data,
            }
        )


_OUTCOMES = {
    "webhook.delivery_succeeded": "succeeded",
    "webhook.delivery_failed": "failed",
    "webhook.delivery_dead_lettered": "dead_lettered",
}
