"""Create the catalogue's topics (and their dead-letter twins) idempotently."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.topics import TOPICS, Topic, dead_letter_name, physical_name

TOPIC_ALREADY_EXISTS = 36


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic for a reason other than 'exists'."""


async def ensure_topics(
    bootstrap: str, prefix: str = "", topics: Iterable[Topic] = TOPICS.values()
) -> list[str]:
    """Create every missing topic; return the physical names that now exist."""
    wanted: list[NewTopic] = []
    for topic in topics:
        name = physical_name(topic, prefix)
        for physical in (name, dead_letter_name(name)):
            wanted.append(NewTopic(physical, topic.partitions, 1, topic_configs=topic.config()))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(wanted)
    finally:
        await admin.close()
    for name, code, message in response.topic_errors:
        if code not in (0, TOPIC_ALREADY_EXISTS):
            raise TopicCreationError(f"cannot create topic {name}: {message} (error {code})")
    return [topic.name for topic in wanted]
