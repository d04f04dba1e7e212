"""Webhook settings, retry policy and the subscription fold: pure rules, no servers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from typing import Any

import pytest

from streams.webhooks.policy import next_wait, retry_after
from streams.webhooks.settings import WebhookSettingsError, load_webhook_settings
from streams.webhooks.subscriptions import DELETED, SUBSCRIBED, UPDATED, fold

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_defaults_follow_svix() -> None:
    settings = load_webhook_settings()
    assert settings.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.timeout == 15
    assert settings.disable_after == 5 * 86400
    assert settings.allowed_networks == ()


def test_env_values_are_durations_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERBUS_WEBHOOK_RETRY_SCHEDULE", "0.2s, 400ms,1m,2h,1d")
    monkeypatch.setenv("LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.1/32,10.0.0.0/8,::1")
    monkeypatch.setenv("LEDGERBUS_WEBHOOK_DISABLE_AFTER", "90")
    settings = load_webhook_settings()
    assert settings.retry_schedule == (0.2, 0.4, 60, 7200, 86400)
    assert settings.allowed_networks == (
        ip_network("127.0.0.1/32"),
        ip_network("10.0.0.0/8"),
        ip_network("::1/128"),
    )
    assert settings.disable_after == 90


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RETRY_SCHEDULE", "5s,soon", "RETRY_SCHEDULE: .*'soon' is not a duration"),
        ("TIMEOUT", "-1", "TIMEOUT: .*not a duration"),
        ("ALLOWED_NETWORKS", "10.0.0.0/33", "ALLOWED_NETWORKS"),
        ("CONCURRENCY", "0", "CONCURRENCY"),
        ("JITTER", "1.5", "JITTER"),
    ],
)
def test_bad_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"LEDGERBUS_WEBHOOK_{name}", value)
    with pytest.raises(WebhookSettingsError, match=f"LEDGERBUS_WEBHOOK_{message}"):
        load_webhook_settings()


def test_waits_follow_the_schedule_with_bounded_jitter_then_give_up() -> None:
    settings = load_webhook_settings(retry_schedule="1s,10s,100s", jitter=0.2)
    rng = random.Random(7)
    waits = [[next_wait(settings, tries, rng=rng) for tries in (1, 2, 3)] for _ in range(200)]
    for base, column in zip((1, 10, 100), zip(*waits, strict=True), strict=True):
        assert all(w is not None and 0.8 * base <= w <= 1.2 * base for w in column)
        assert len(set(column)) > 100  # spread, not a constant
    assert next_wait(settings, 4) is None  # 4 attempts made: dead letter


def test_retry_after_replaces_the_wait_up_to_a_cap() -> None:
    settings = load_webhook_settings(retry_schedule="1s,1s", max_retry_after="1h")
    assert next_wait(settings, 1, asked=30) == 30
    assert next_wait(settings, 1, asked=86400) == 3600
    assert next_wait(settings, 3, asked=30) is None  # the schedule still ends


def test_retry_after_header_forms() -> None:
    assert retry_after("120", T0) == 120
    assert retry_after("Wed, 01 Jan 2025 00:00:30 GMT", T0) == 30
    assert retry_after("Tue, 31 Dec 2024 00:00:00 GMT", T0) == 0  # in the past: now
    assert retry_after("soon", T0) is None
    assert retry_after(None, T0) is None


SUBSCRIPTION: dict[str, Any] = {
    "webhook_id": "wh",
    "url": "https://a.example/h",
    "event_types": ["*"],
}


def test_fold_is_last_writer_wins_by_time_and_deletion_is_final() -> None:
    gone: dict[str, Any] = {"enabled": False, "reason": "endpoint answered 410 Gone"}
    changes: list[tuple[datetime, str, dict[str, Any]]] = [
        (T0, SUBSCRIBED, {**SUBSCRIPTION, "secret": "whsec_x"}),
        (T0 + timedelta(seconds=2), UPDATED, gone),
        (T0 + timedelta(seconds=3), UPDATED, {"url": "https://b.example"}),
    ]
    state = fold(changes)
    assert state is not None
    assert (state["url"], state["enabled"], state["reason"]) == (
        "https://b.example",
        False,
        "endpoint answered 410 Gone",
    )
    enabled_again = fold([*changes, (T0 + timedelta(seconds=4), UPDATED, {"enabled": True})])
    assert enabled_again is not None
    assert (enabled_again["enabled"], enabled_again["reason"]) == (True, None)
    later = T0 + timedelta(seconds=6)
    deleted = fold([*changes, (T0 + timedelta(seconds=5), DELETED, {}), (later, UPDATED, gone)])
    assert deleted is not None and deleted["deleted"]
    assert deleted["updated_at"] == T0 + timedelta(seconds=5)  # nothing after the deletion
    assert fold([(T0, UPDATED, {"enabled": False})]) is None  # never subscribed: no endpoint
