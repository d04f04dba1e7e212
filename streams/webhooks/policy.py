"""What an attempt's answer means: success, retry when, or give up.

2xx is success; anything else, a timeout or a refused connection is a failure.
Failures are retried after the next wait of the schedule, spread by jitter so
endpoints coming back are not hit by every retry at once; on 429 and 503 the
endpoint's ``Retry-After`` replaces the wait (never earlier than it asks).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from streams.webhooks.settings import WebhookSettings

#: Statuses whose Retry-After is honoured (the issue, and RFC 9110).
RETRY_AFTER_STATUSES = frozenset({429, 503})
GONE = 410


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt got back."""

    status_code: int | None
    latency_ms: int
    finished_at: datetime
    error: str | None = None
    response_body: str | None = None
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == GONE


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_wait(
    settings: WebhookSettings,
    tries: int,
    asked: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after ``tries`` failed attempts in this round,
    or None when the schedule is exhausted (dead letter)."""
    schedule = settings.retry_schedule
    if tries > len(schedule):
        return None
    if asked is not None:
        return min(asked, settings.max_retry_after)
    spread = settings.jitter * schedule[tries - 1]
    return schedule[tries - 1] + (rng or random).uniform(-spread, spread)
