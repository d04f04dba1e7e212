"""The budget rules: calendar periods in a timezone, thresholds, the accept test, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.models import Envelope
from streams.budgets import (
    LIFETIME,
    MAX_MICROS,
    InvalidBudget,
    check_budget,
    check_event,
    crossed,
    fits,
    holding,
    period_start,
    status,
)
from tests.support.budgets import budget, cost, run_request


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "timezone", "at", "start"),
    [
        (None, None, utc(2026, 5, 17, 9), LIFETIME),
        (None, "Europe/Paris", utc(2026, 5, 17, 9), LIFETIME),
        ("daily", None, utc(2026, 5, 17, 23, 59), utc(2026, 5, 17)),
        # 22:00 in New York on 1 March is still 1 March there.
        ("daily", "America/New_York", utc(2026, 3, 2, 3), utc(2026, 3, 1, 5)),
        # 1 January 2026 is a Thursday: its ISO week began on Monday 29 December.
        ("weekly", None, utc(2026, 1, 1, 12), utc(2025, 12, 29)),
        ("weekly", None, utc(2026, 1, 4, 23, 59), utc(2025, 12, 29)),
        ("weekly", None, utc(2026, 1, 5), utc(2026, 1, 5)),
        # 20:00 UTC on 31 January is 01:30 on 1 February in India (+05:30).
        ("monthly", "Asia/Kolkata", utc(2026, 1, 31, 20), utc(2026, 1, 31, 18, 30)),
        ("monthly", None, utc(2026, 1, 31, 20), utc(2026, 1, 1)),
        # New Zealand's new year starts in summer time (+13:00) on 31 December UTC.
        ("yearly", "Pacific/Auckland", utc(2025, 12, 31, 12), utc(2025, 12, 31, 11)),
        ("yearly", "Pacific/Auckland", utc(2025, 12, 31, 10), utc(2024, 12, 31, 11)),
        # Santiago skips 00:00-01:00 on 8 September 2024: that day starts at the jump.
        ("daily", "America/Santiago", utc(2024, 9, 8, 12), utc(2024, 9, 8, 4)),
        # São Paulo has no DST since 2019; -03:00 all year.
        ("monthly", "America/Sao_Paulo", utc(2026, 7, 1, 2), utc(2026, 6, 1, 3)),
    ],
)
def test_period_start(
    period: str | None, timezone: str | None, at: datetime, start: datetime
) -> None:
    assert period_start(period, timezone, at) == start


@pytest.mark.parametrize("period", ["daily", "weekly", "monthly", "yearly"])
@pytest.mark.parametrize("timezone", [None, "Europe/London", "America/Santiago", "Asia/Kathmandu"])
def test_periods_tile_time(period: str, timezone: str | None) -> None:
    """Every instant lies in exactly one period: its start is at or before it, is
    its own start, and the instant just before the start is in the previous one."""
    at = utc(2024, 1, 1, 0, 7)
    while at < utc(2025, 1, 1):
        start = period_start(period, timezone, at)
        assert start <= at
        assert period_start(period, timezone, start) == start
        assert period_start(period, timezone, start - timedelta(microseconds=1)) < start
        at += timedelta(hours=5, minutes=13)


def test_a_new_month_is_a_new_period() -> None:
    january = period_start("monthly", "Europe/Berlin", utc(2026, 1, 31, 22, 59))
    february = period_start("monthly", "Europe/Berlin", utc(2026, 1, 31, 23, 0))
    assert (january, february) == (utc(2025, 12, 31, 23), utc(2026, 1, 31, 23))


@pytest.mark.parametrize(
    ("period", "timezone", "reason"),
    [
        ("unknown", None, "unknown_period"),
        ("hourly", None, "unknown_period"),
        ("monthly", "Mars/Olympus_Mons", "unknown_timezone"),
        ("monthly", "", "unknown_timezone"),
        ("monthly", "../../etc/passwd", "unknown_timezone"),
        (None, "Europe/Nowhere", "unknown_timezone"),
    ],
)
def test_bad_budgets_are_refused(period: str | None, timezone: str | None, reason: str) -> None:
    with pytest.raises(InvalidBudget) as refused:
        check_budget(period, timezone)
    assert refused.value.reason == reason
    if period is not None:
        with pytest.raises(InvalidBudget):
            period_start(period, timezone, utc(2026, 1, 1))


def test_thresholds_crossed() -> None:
    assert crossed(0, 1_000) == ()
    assert crossed(499, 1_000) == ()
    assert crossed(500, 1_000) == (50,)
    assert crossed(899, 1_000) == (50, 80)
    assert crossed(900, 1_000) == (50, 80, 90)
    assert crossed(1_000, 1_000) == (50, 80, 90, 100)
    assert crossed(5_000, 1_000) == (50, 80, 90, 100)
    assert crossed(0, 0) == (50, 80, 90, 100)  # a zero budget is spent from the start


def test_status() -> None:
    assert status(10, None) == "no_budget"
    assert status(799, 1_000) == "ok"
    assert status(800, 1_000) == "warning"
    assert status(999, 1_000) == "warning"
    assert status(1_000, 1_000) == "exceeded"


def test_a_run_fits_while_spend_reserved_and_estimate_stay_within_the_budget() -> None:
    assert fits(spent=0, reserved=900, estimate=100, amount=1_000)
    assert not fits(spent=0, reserved=901, estimate=100, amount=1_000)
    assert not fits(spent=1, reserved=900, estimate=100, amount=1_000)
    # Guarantee 9: once spend has reached the budget even a free run is refused.
    assert fits(spent=999, reserved=0, estimate=0, amount=1_000)
    assert not fits(spent=1_000, reserved=0, estimate=0, amount=1_000)


def test_a_run_holds_the_rest_of_its_estimate_while_it_runs() -> None:
    assert holding(accepted=True, closed=False, reserved=100, consumed=30) == 70
    assert holding(accepted=True, closed=False, reserved=100, consumed=130) == 0
    assert holding(accepted=True, closed=True, reserved=100, consumed=30) == 0
    assert holding(accepted=False, closed=False, reserved=100, consumed=0) == 0


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (cost("t", "pr\x00oj", "r1", 5), "invalid_text"),
        (run_request("t", "proj", "r\x00", 5), "invalid_text"),
        (cost("t", "proj", "r1", MAX_MICROS + 1), "too_large"),
        (run_request("t", "proj", "r1", 2**63 - 1), "too_large"),
        (budget("t", "proj", 5, period="monthly", timezone="Nowhere/Land"), "unknown_timezone"),
        (budget("t", "proj", 5, period="unknown"), "unknown_period"),
    ],
)
def test_events_the_budgets_cannot_use(event: Envelope[Any], reason: str) -> None:
    with pytest.raises(InvalidBudget) as refused:
        check_event(event)
    assert refused.value.reason == reason


def test_events_the_budgets_can_use() -> None:
    check_event(cost("t", "proj", "r1", MAX_MICROS))
    check_event(budget("t", "proj", 2**63 - 1, period="weekly", timezone="Asia/Tokyo"))
