"""Webhook delivery settings, read from ``LEDGERBUS_WEBHOOK_*`` environment variables.

Durations are written the way people say them (``5s``, ``30m``, ``2h``, ``5d``;
a bare number is seconds), lists are comma-separated, so a fast test schedule
is ``LEDGERBUS_WEBHOOK_RETRY_SCHEDULE=0.2s,0.4s,0.8s``.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "LEDGERBUS_WEBHOOK_"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")

Network = IPv4Network | IPv6Network


class WebhookSettingsError(ValueError):
    """A webhook setting has a bad value; the message names the environment variable."""


def parse_duration(value: Any) -> float:
    """Seconds in ``value``: a number, or a string such as ``0.2s``, ``5m``, ``10h``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as 5s, 30m, 2h or 5d")
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds < 0:
        raise ValueError(f"{value!r} is negative")
    return seconds


_DURATIONS = (
    "timeout",
    "disable_after",
    "max_retry_after",
    "lease_margin",
    "poll_interval",
    "keep_succeeded",
)


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class WebhookSettings(BaseSettings):
    """How deliveries are attempted, retried, bounded and guarded."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        description="Waits before each retry; one attempt more than entries, then dead letter",
    )
    jitter: float = Field(
        0.2, ge=0.0, lt=1.0, description="Each wait is spread randomly by up to ± this fraction"
    )
    timeout: float = Field(15.0, gt=0, description="Seconds one attempt may take in total")
    allowed_networks: Annotated[tuple[Network, ...], NoDecode] = Field(
        (), description="CIDRs deliveries may reach although private (e.g. 127.0.0.1/32)"
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Host names deliveries may reach whatever they resolve to"
    )
    disable_after: float = Field(
        5 * 86400.0, gt=0, description="An endpoint failing this long without a success is disabled"
    )
    concurrency: int = Field(16, ge=1, description="Attempts in flight per endpoint")
    max_in_flight: int = Field(256, ge=1, description="Attempts in flight per worker")
    max_response_body: int = Field(
        2048, ge=0, description="Characters of a response body kept in the delivery log"
    )
    max_retry_after: float = Field(
        86400.0, gt=0, description="Longest Retry-After honoured; longer ones are capped"
    )
    lease_margin: float = Field(
        30.0, gt=0, description="A claimed attempt not recorded within timeout + this is retaken"
    )
    poll_interval: float = Field(0.2, gt=0, description="Seconds between looks for due work")
    keep_succeeded: float = Field(
        8 * 86400.0,
        gt=0,
        description="Succeeded queue rows kept this long (redelivered events dedupe)",
    )

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        return tuple(parse_duration(part) for part in _split(value))

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        return tuple(ip_network(part, strict=False) for part in _split(value))

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        return tuple(str(host).lower().rstrip(".") for host in _split(value))

    @field_validator(*_DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @property
    def lease(self) -> float:
        """How long a claimed attempt is ours before another worker may take it."""
        return self.timeout + self.lease_margin


def load_webhook_settings(**overrides: Any) -> WebhookSettings:
    """Settings from the environment; a bad value is one clear error naming its variable."""
    try:
        return WebhookSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{str(error['loc'][0]).upper()}: {error['msg']}" for error in exc.errors()
        )
        raise WebhookSettingsError(problems) from None
