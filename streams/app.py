"""The faust application every stream processor plugs into.

Values travel as raw bytes (Confluent wire format, decoded by our own serde),
so faust never needs to know the schemas. Faust tables are not used for
anything that decides: the embedded broker forgets its state on restart, so
decisions read and write PostgreSQL (see ``streams.context``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aiokafka
import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types import TransportT

from schemas.topics import physical_name

#: How long a fetch may wait for data. faust hard-codes 1,500 ms, and Tansu
#: answers a waiting fetch only when the wait ends, not when data arrives, so
#: every hop through faust cost up to 1.5 s (measured: p50 1.5 s from publish
#: to budget decision). 20 ms trades idle fetches (50 a second per consumer)
#: for that latency: an agent handoff crosses three such hops.
FETCH_MAX_WAIT_MS = 20


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
    #: faust keeps a folder per app (table stores we do not use, but it creates it).
    data_dir: Path = Path(".ledgerbus")

    @property
    def app_id(self) -> str:
        return self.group or f"{self.topic_prefix}ledgerbus-streams"


class _QuickFetchThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer


class _QuickFetchConsumer(Consumer):
    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _QuickFetchThread(self, loop=self.loop, beacon=self.beacon)


class _QuickFetchTransport(Transport):
    Consumer = _QuickFetchConsumer


class StreamsApp(faust.App):
    """faust's app with a consumer that does not sit on fetches (``FETCH_MAX_WAIT_MS``)."""

    def _new_transport(self) -> TransportT:
        return _QuickFetchTransport(self.conf.broker_consumer, self)


def create_app(config: StreamsConfig) -> faust.App:
    """A faust app tuned for the embedded broker and for at-least-once processing."""
    # faust creates its folder without parents: a first start on a fresh data dir failed.
    (config.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    return StreamsApp(
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
        broker_heartbeat_interval=min(1.0, config.session_timeout_seconds / 3),
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        # On a rebalance, hand partitions over without waiting for in-flight
        # events (a take_events batch could hold a rebalance for ~30 s): the new
        # owner handles them again, and decisions are idempotent and row-locked.
        stream_wait_empty=False,
        datadir=str(config.data_dir / "faust"),
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
