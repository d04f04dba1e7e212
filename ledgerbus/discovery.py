"""How a ledgerbus command finds the servers: settings first, then a running ``dev``.

``ledgerbus dev`` writes ``<data_dir>/dev.json`` with its endpoints once ready,
so ``ledgerbus publish`` or ``ledgerbus gateway`` in another terminal use the
same stack with no configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil

from ledgerbus.embedded.stack import Endpoints
from ledgerbus.settings import Settings


class NoStackFound(RuntimeError):
    """Neither settings nor a running ``ledgerbus dev`` say where the servers are."""


def state_file(data_dir: Path) -> Path:
    return data_dir / "dev.json"


def write_state(
    data_dir: Path, endpoints: Endpoints, gateway_url: str, pids: dict[str, int | None]
) -> None:
    state = {
        "pid": os.getpid(),
        "pids": pids,
        "kafka_bootstrap": endpoints.kafka_bootstrap,
        "database_url": endpoints.database_url,
        "redis_url": endpoints.redis_url,
        "schema_registry_url": endpoints.schema_registry_url,
        "gateway_url": gateway_url,
    }
    path = state_file(data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _running_dev(settings: Settings) -> dict[str, Any]:
    """The state a live ``ledgerbus dev`` wrote for this data dir, or ``{}``."""
    path = state_file(settings.data_dir)
    if path.exists():
        state: dict[str, Any] = json.loads(path.read_text())
        if psutil.pid_exists(int(state["pid"])):
            return state
    return {}


def resolve_database_url(settings: Settings) -> str:
    """For commands that need only PostgreSQL (``db migrate``, ``audit verify``...)."""
    url = settings.database_url or _running_dev(settings).get("database_url")
    if not url:
        raise NoStackFound(
            f"no running `ledgerbus dev` in {settings.data_dir.resolve()} and "
            "LEDGERBUS_DATABASE_URL not set: start `ledgerbus dev` or set it"
        )
    return str(url)


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Endpoints from settings, filling gaps from a live ``ledgerbus dev``."""
    running = _running_dev(settings)
    kafka = settings.kafka_bootstrap or running.get("kafka_bootstrap")
    database = settings.database_url or running.get("database_url")
    redis = settings.redis_url or running.get("redis_url")
    missing = [
        name
        for name, value in (
            ("LEDGERBUS_KAFKA_BOOTSTRAP", kafka),
            ("LEDGERBUS_DATABASE_URL", database),
            ("LEDGERBUS_REDIS_URL", redis),
        )
        if not value
    ]
    if missing or kafka is None or database is None or redis is None:
        raise NoStackFound(
            f"no running `ledgerbus dev` in {settings.data_dir.resolve()} and "
            f"{', '.join(missing)} not set: start `ledgerbus dev` or set them"
        )
    return Endpoints(
        kafka_bootstrap=kafka,
        database_url=database,
        redis_url=redis,
        schema_registry_url=settings.schema_registry_url or running.get("schema_registry_url"),
    )
