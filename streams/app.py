"""The faust application every stream processor plugs into.

Values travel as raw bytes (Confluent wire format, decoded by our own serde),
so faust never needs to know the schemas. Faust tables are not used for
anything that decides: the embedded broker forgets its state on restart, so
decisions read and write PostgreSQL (see ``streams.context``).
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from schemas.topics import physical_name


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    """Where the processors run: broker, topic prefix and the consumer group (= app id)."""

    bootstrap: str
    topic_prefix: str = ""
    group: str | None = None
    #: Tansu detects a dead member after ~1.5x this; short keeps failover quick.
    session_timeout_seconds: float = 6.0
    #: faust opens a web server even when told not to; each worker needs its own port.
    web_port: int = 0

    @property
    def app_id(self) -> str:
        return self.group or f"{self.topic_prefix}ledgerbus-streams"


def create_app(config: StreamsConfig) -> faust.App:
    """A faust app tuned for the embedded broker and for at-least-once processing."""
    return faust.App(
        config.app_id,
        broker=f"kafka://{config.bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        web_enabled=False,
        web_port=config.web_port,
        web_host="127.0.0.1",
        topic_replication_factor=1,
        topic_allow_declare=True,
        broker_session_timeout=config.session_timeout_seconds,
        broker_heartbeat_interval=1.0,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
    )


def event_topic(app: faust.App, config: StreamsConfig, logical: str) -> faust.TopicT:
    """One of ledgerbus's event topics (see ``schemas.topics``), as raw bytes."""
    return app.topic(physical_name(logical, config.topic_prefix), value_type=bytes, key_type=bytes)


def internal_topic(
    app: faust.App, config: StreamsConfig, name: str, partitions: int
) -> faust.TopicT:
    """A topic private to the processors (e.g. events re-keyed by project)."""
    return app.topic(
        f"{config.app_id}-{name}",
        partitions=partitions,
        value_type=bytes,
        key_type=bytes,
        internal=True,
    )
