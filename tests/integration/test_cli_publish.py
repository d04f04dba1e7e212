"""``ledgerbus publish`` and ``ledgerbus tail`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import Isolation, StackUnderTest
from tests.support.cli import run_cli

BUDGET = json.dumps({"project_id": "proj-1", "amount_micros": 200_000_000})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["budget.sett", "--subject", "p", "--data", BUDGET],
            "unknown event type 'budget.sett'; did you mean budget.set",
        ),
        (["budget.set", "--subject", "p", "--data", "{not json"], "--data is not valid JSON"),
        (["budget.set", "--subject", "p", "--data", "[1]"], "must be a JSON object"),
        (
            ["budget.set", "--subject", "p", "--data", '{"project_id": "p"}'],
            "invalid budget.set: data.amount_micros: Field required",
        ),
        (
            ["budget.set", "--subject", "p", "--data", '{"project_id": "p", "amount_micros": 1.5}'],
            "data.amount_micros",
        ),
        (["budget.set", "--subject", "p", "--data", "@/nonexistent.json"], "cannot read"),
        (["budget.set", "--subject", "", "--data", BUDGET], "subject"),
    ],
)
async def test_bad_input_is_refused_and_publishes_nothing(
    args: list[str],
    message: str,
    cli_env: dict[str, str],
    stack: StackUnderTest,
    isolation: Isolation,
) -> None:
    result = await run_cli(["publish", *args, "--tenant", isolation.tenant_id], cli_env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    topic = f"{isolation.topic_prefix}ledgerbus.budgets"
    assert await records_in(stack.endpoints.kafka_bootstrap, topic) == 0


async def records_in(bootstrap: str, topic: str) -> int:
    """How many records a topic holds (0 if it does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer.topics()
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        if not partitions:
            return 0
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        batches = await consumer.getmany(timeout_ms=1000)
        return sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()


async def test_publish_then_tail(
    cli_env: dict[str, str], isolation: Isolation, tmp_path: Path
) -> None:
    data_file = tmp_path / "budget.json"
    data_file.write_text(BUDGET)
    published = await run_cli(
        [
            "publish",
            "budget.set",
            "--subject",
            "proj-1",
            "--data",
            f"@{data_file}",
            "--tenant",
            isolation.tenant_id,
        ],
        cli_env,
    )
    assert published.returncode == 0, published.stderr
    delivery = json.loads(published.stdout)
    assert delivery["topic"] == f"{isolation.topic_prefix}ledgerbus.budgets"
    assert delivery["offset"] >= 0

    tailed = await run_cli(
        [
            "tail",
            "--from-beginning",
            "--types",
            "budget.*",
            "--tenant",
            isolation.tenant_id,
            "--limit",
            "1",
        ],
        cli_env,
    )
    assert tailed.returncode == 0, tailed.stderr
    event = json.loads(tailed.stdout.splitlines()[0])
    assert event["id"] == delivery["event_id"]
    assert event["data"]["amount_micros"] == 200_000_000
    assert event["tenant_id"] == isolation.tenant_id
