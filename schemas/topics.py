"""The topic catalogue: every logical Kafka topic ledgerbus uses and how it is configured.

Which event type goes to which topic is declared in each payload `.avsc` by the
`"ledgerbus.topic"` attribute (default `custom`), so a schema file carries all
routing facts about its event; this module only defines the topics themselves.
The Kafka key of every record is the envelope's `subject`, which is what keeps
order per subject (SPEC Guarantee 2).
"""

from dataclasses import dataclass
from types import MappingProxyType

DAY_MS = 24 * 60 * 60 * 1000

DEFAULT_TOPIC = "custom"
"""Logical topic for event types whose schema names none (custom event types)."""

DEAD_LETTER_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class Topic:
    """A logical topic; the physical name adds a deployment prefix (see `physical_name`)."""

    name: str
    partitions: int
    retention_ms: int
    doc: str
    cleanup_policy: str = "delete"

    def config(self) -> dict[str, str]:
        """Topic-level configs as Kafka's CreateTopics request wants them (strings)."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


# Kafka keeps days, not history: PostgreSQL is the system of record, so every topic
# uses delete retention. Compaction would be wrong anyway, since several event
# types with different meanings share a key (= subject) on the same topic.
TOPICS: MappingProxyType[str, Topic] = MappingProxyType(
    {
        topic.name: topic
        for topic in (
            Topic("commands", 6, 7 * DAY_MS, "Requests that a processor accepts or rejects."),
            Topic("agent-runs", 6, 7 * DAY_MS, "Lifecycle of agent runs, keyed by run id."),
            Topic("agent-messages", 6, 7 * DAY_MS, "Sealed agent-to-agent traffic."),
            Topic("agents", 3, 7 * DAY_MS, "Agent directory: key registrations, heartbeats."),
            Topic("approvals", 3, 30 * DAY_MS, "Human-in-the-loop approvals and verdicts."),
            Topic("costs", 6, 30 * DAY_MS, "One record per LLM call with its cost."),
            Topic("budgets", 3, 30 * DAY_MS, "Project budgets and their thresholds."),
            Topic("compliance", 3, 30 * DAY_MS, "PII findings, redactions, erasure, retention."),
            Topic("webhooks", 6, 7 * DAY_MS, "Webhook subscriptions and delivery attempts."),
            Topic("audit", 3, 30 * DAY_MS, "Signed checkpoints of the per-tenant audit chain."),
            Topic("workflows", 3, 7 * DAY_MS, "Multi-agent workflow lifecycle."),
            Topic(DEFAULT_TOPIC, 3, 7 * DAY_MS, "Event types registered by teams at run time."),
        )
    }
)


def get_topic(name: str) -> Topic:
    """Return a logical topic, failing with the list of known ones on a typo."""
    try:
        return TOPICS[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known topics: {', '.join(TOPICS)}") from None


def physical_name(topic: str | Topic, prefix: str = "") -> str:
    """Kafka topic name; the prefix lets several deployments share one cluster."""
    name = topic.name if isinstance(topic, Topic) else get_topic(topic).name
    return f"{prefix}ledgerbus.{name}"


def dead_letter_name(physical_topic: str) -> str:
    """Dead-letter topic for a physical topic: poison messages go to `<topic>.dlq`."""
    return physical_topic + DEAD_LETTER_SUFFIX
