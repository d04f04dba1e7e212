"""Run ``ledgerbus dev`` as a real OS process, the way a user does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil


class DevProcess:
    """One ``ledgerbus dev`` in ``workdir``; output captured to a file."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.data_dir = workdir / ".ledgerbus"
        self.output_path = workdir / f"dev-{time.monotonic_ns()}.out"
        self.env = {
            **os.environ,
            "LEDGERBUS_DATA_DIR": str(self.data_dir),
            "LEDGERBUS_GATEWAY_PORT": "0",
            **(env or {}),
        }
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> None:
        with self.output_path.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "ledgerbus", "dev", *args],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the 'Press Ctrl-C' line; return dev.json (endpoints, pids)."""
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Press Ctrl-C to stop." in self.output:
                state: dict[str, Any] = json.loads((self.data_dir / "dev.json").read_text())
                return state
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"ledgerbus dev exited {self.popen.returncode}:\n{self.output}"
                )
            time.sleep(0.05)
        raise AssertionError(f"ledgerbus dev not ready in {timeout}s:\n{self.output}")

    def run_to_exit(self, timeout: float = 30.0) -> int:
        """For runs expected to fail fast: wait for the exit code."""
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout)


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """PIDs still alive (and not zombies) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
