"""Prometheus metrics of the live streams, served with the gateway's ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SUBSCRIBERS = Gauge(
    "ledgerbus_gateway_stream_subscribers", "Open event streams, by protocol", ["protocol"]
)
DROPPED = Counter(
    "ledgerbus_gateway_stream_dropped_total",
    "Subscribers dropped because their buffer filled up",
    ["protocol"],
)
FANNED_OUT = Counter(
    "ledgerbus_gateway_stream_fanned_out_total",
    "Live events queued for subscribers (one per subscriber that gets it)",
)
SKIPPED = Counter(
    "ledgerbus_gateway_stream_skipped_total",
    "Records or archived rows a stream could not decode, by reason",
    ["reason"],
)
