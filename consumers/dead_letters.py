"""Dead-letter topics: poison messages leave the stream with their reason attached.

The original key, value and headers are kept byte for byte; ``ledgerbus-dlq-*``
headers say why and where the message came from, so it can be inspected or
replayed. The consumer commits past a poison message only after its dead
letter is confirmed, so nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from schemas.topics import dead_letter_name

DEAD_LETTERED = Counter(
    "ledgerbus_dead_lettered_total", "Messages sent to a dead-letter topic", ["topic", "reason"]
)


@dataclass(frozen=True, slots=True)
class Poison:
    """A message that cannot be handled, and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str
    error: str


class DeadLetters:
    """Sends poison messages to ``<topic>.dlq`` and waits for the broker's ack."""

    def __init__(self, producer: AIOKafkaProducer, group_id: str) -> None:
        self.producer = producer
        self.group_id = group_id

    async def send(self, poison: Poison) -> None:
        headers = [
            *poison.headers,
            ("ledgerbus-dlq-reason", poison.reason.encode()),
            ("ledgerbus-dlq-error", poison.error[:2000].encode()),
            ("ledgerbus-dlq-topic", poison.topic.encode()),
            ("ledgerbus-dlq-partition", str(poison.partition).encode()),
            ("ledgerbus-dlq-offset", str(poison.offset).encode()),
            ("ledgerbus-dlq-group", self.group_id.encode()),
        ]
        await self.producer.send_and_wait(
            dead_letter_name(poison.topic), value=poison.value, key=poison.key, headers=headers
        )
        DEAD_LETTERED.labels(poison.topic, poison.reason).inc()
