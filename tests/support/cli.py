"""Running the ``ledgerbus`` CLI as a user does: a real subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys


async def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``ledgerbus ARGS``; in a thread, because the registry under test is served
    by the test's own event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ledgerbus", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
