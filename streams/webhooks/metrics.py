"""Prometheus metrics of webhook delivery (labels are bounded: no tenant, no endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "ledgerbus_webhook_deliveries_total",
    "Delivery attempts by outcome (succeeded, failed, dead_lettered)",
    ["outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "ledgerbus_webhook_attempt_seconds",
    "Time one delivery attempt took, answered or not",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
ENQUEUED = Counter("ledgerbus_webhook_enqueued_total", "Deliveries queued for matching events")
QUEUE_DEPTH = Gauge("ledgerbus_webhook_queue_depth", "Unfinished deliveries by status", ["status"])
DISABLED_ENDPOINTS = Gauge(
    "ledgerbus_webhook_disabled_endpoints", "Webhook endpoints currently disabled"
)
DISABLED = Counter(
    "ledgerbus_webhook_disabled_total",
    "Endpoints disabled by the dispatcher (reason: gone, failing)",
    ["reason"],
)
ERRORS = Counter(
    "ledgerbus_webhook_errors_total",
    "Unexpected errors in the webhook processor, by stage",
    ["stage"],
)
