"""A ``cost.recorded`` event to publish: the bus tests' everyday payload."""

from __future__ import annotations

from typing import Any

from producers.publisher import build_event
from schemas.catalog import default_catalog
from schemas.models import Envelope

COSTS = default_catalog().get("cost.recorded")


def cost_event(tenant: str, subject: str, seq: int, cost: int = 10) -> Envelope[Any]:
    return build_event(
        COSTS,
        subject=subject,
        tenant_id=tenant,
        source="test",
        data={
            "run_id": subject,
            "project_id": "proj-1",
            "agent_name": "developer",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "input_tokens": seq,
            "output_tokens": 5,
            "cost_micros": cost,
            "latency_ms": 12,
        },
    )
