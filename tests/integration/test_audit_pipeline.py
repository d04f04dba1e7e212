"""The whole audit path as deployed: publish -> ``ledgerbus archiver`` (which signs
checkpoints) -> ``ledgerbus audit verify`` checks chain and signatures."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import asyncpg

from producers.publisher import Publisher
from tests.conftest import Isolation
from tests.support.archive import archiver_process, eventually, mixed_events
from tests.support.cli import run_cli


def start_archiver(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return archiver_process(env, log, "--checkpoint-every", "10")


async def test_archiver_signs_checkpoints_that_verify_accepts(
    isolation: Isolation,
    publisher: Publisher,
    db_pool: asyncpg.Pool,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    tenant = isolation.tenant_id
    await publisher.publish_many(mixed_events([tenant], 25))
    env = {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}
    archiver = start_archiver(env, tmp_path / "archiver.log")
    try:

        async def checkpoints_at_least(n: int) -> bool:
            count = await db_pool.fetchval(
                "SELECT count(*) FROM events WHERE tenant_id = $1 AND type = 'audit.checkpoint'",
                tenant,
            )
            return int(count) >= n

        await eventually(lambda: checkpoints_at_least(1), timeout=60)
        await publisher.publish_many(mixed_events([tenant], 25))  # due again: a second one
        await eventually(lambda: checkpoints_at_least(2), timeout=60)
    finally:
        archiver.send_signal(signal.SIGTERM)
        assert archiver.wait(timeout=30) == 0, (tmp_path / "archiver.log").read_text()

    verified = await run_cli(["audit", "verify", "--tenant", tenant], env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    line = verified.stdout.strip()
    assert line.startswith(f"ok {tenant} length=")
    assert int(line.split("checkpoints=")[1].split()[0]) >= 2
