"""Reading a topic back in tests, with the real Kafka client."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from ledgerbus.settings import load_settings

SESSION_TIMEOUT_MS = round(load_settings().session_timeout * 1000)
"""For consumer groups tests build by hand: the session's setting (tests/conftest.py)."""


async def read_all(
    bootstrap: str, topic: str, expect: int, timeout: float = 20.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` (all partitions), once ``expect`` have arrived."""
    reader = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    records: list[ConsumerRecord] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < expect:
                for batch in (await reader.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await reader.stop()
    return records
