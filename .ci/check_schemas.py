"""CI: would this commit's `.avsc` files break readers of any schema ever committed?

Stands in for the production registry, which CI cannot reach: it starts a
throwaway `ledgerbus dev`, registers every historical version of every event
schema from git history (oldest first, through the registry's HTTP API, so the
registry's own BACKWARD_TRANSITIVE rule applies), then runs the real
`ledgerbus schemas check` against it and exits with its code.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from schemas.catalog import EVENT_TYPE_ATTR, compose
from schemas.registry_client import RegistryClient, RegistryClientError

ROOT = Path(__file__).resolve().parent.parent
AVRO = "schemas/avro"


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def schemas_at(commit: str) -> list[dict[str, Any]]:
    """Every event schema (envelope + payload) as committed in `commit`."""
    paths = [p for p in git("ls-tree", "-r", "--name-only", commit, AVRO).split() if p]
    envelope = json.loads(git("show", f"{commit}:{AVRO}/envelope.avsc"))
    composed = []
    for path in paths:
        if path.endswith(".avsc") and not path.endswith("envelope.avsc"):
            payload = json.loads(git("show", f"{commit}:{path}"))
            if EVENT_TYPE_ATTR in payload:
                composed.append(compose(envelope, payload))
    return composed


async def register_history(registry_url: str) -> None:
    commits = git("log", "--reverse", "--format=%H", "--", AVRO).split()
    print(f"registering schemas from {len(commits)} commit(s) of {AVRO}", flush=True)
    registry = RegistryClient(registry_url)
    try:
        for commit in commits:
            for schema in schemas_at(commit):
                try:
                    await registry.register(str(schema["name"]), schema)
                except RegistryClientError as exc:
                    # Not released yet when it changed; the check below still holds
                    # today's files against every version the registry accepted.
                    print(f"  {commit[:8]} {schema['name']}: not registered: {exc}")
    finally:
        await registry.aclose()


def wait_for_state(data_dir: Path, dev: subprocess.Popen[bytes]) -> dict[str, Any]:
    state = data_dir / "dev.json"
    deadline = time.monotonic() + 120
    while not state.exists():
        if dev.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"ledgerbus dev did not start (exit {dev.returncode})")
        time.sleep(0.2)
    loaded: dict[str, Any] = json.loads(state.read_text())
    return loaded


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ledgerbus-schemas-") as tmp:
        data_dir = Path(tmp) / ".ledgerbus"
        env = {**os.environ, "LEDGERBUS_DATA_DIR": str(data_dir), "LEDGERBUS_GATEWAY_PORT": "0"}
        ledgerbus = [sys.executable, "-m", "ledgerbus"]
        dev = subprocess.Popen([*ledgerbus, "dev"], env=env, stdout=subprocess.DEVNULL)
        try:
            state = wait_for_state(data_dir, dev)
            asyncio.run(register_history(state["schema_registry_url"]))
            check = [*ledgerbus, "schemas", "check"]
            return subprocess.run(check, check=False, env=env).returncode
        finally:
            dev.send_signal(signal.SIGTERM)
            dev.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
