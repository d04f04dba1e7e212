"""Every processor ``ledgerbus streams`` runs, and every projection ledgerbus keeps.

Adding a processor is one line here; the worker, ``projections rebuild`` and
``projections run`` all read these lists.
"""

from __future__ import annotations

from event_store.projection_counts import EventCounts
from event_store.projections import Projection
from streams.agent_directory import AgentDirectory
from streams.approval_processor import ApprovalProcessor
from streams.budget_processor import BudgetProcessor
from streams.processor import Processor
from streams.runs import RunsProjection
from streams.webhooks.processor import WebhookProcessor


def processors() -> list[Processor]:
    return [
        ApprovalProcessor(),
        BudgetProcessor(),
        WebhookProcessor(),
    ]


def projections() -> list[Projection]:
    """Every projection, the processors' ones included (names are unique)."""
    return [
        EventCounts(),
        AgentDirectory(),
        RunsProjection(),
        *(p for processor in processors() for p in processor.projections),
    ]
