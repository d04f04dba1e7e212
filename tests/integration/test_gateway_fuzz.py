"""Schemathesis fuzzes the gateway from its own OpenAPI document: no input may give a 5xx.

The CLI runs as a separate process (its HTTP client is synchronous and would
block the event loop serving the gateway), as an admin of a private tenant, so
every operation is reached past auth. The SSE stream never ends by design and
is exercised by its own tests instead.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

from tests.support.gateway import RunningGateway


async def test_no_generated_request_gives_a_server_error(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    token = await gateway.key("fuzz-tenant", "admin", tier="enterprise")
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli is not None, "schemathesis is a dev dependency (pip install -e '.[dev]')"
    process = await asyncio.create_subprocess_exec(
        cli,
        "run",
        f"{gateway.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        "12",
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "20",
        "--seed",
        "20261123",
        "--exclude-path",
        "/v1/streams",
        "--suppress-health-check",
        "all",
        "--no-color",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
    selected = re.search(r"Selected: (\d+)/\d+", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected and tested and tested.group(1) == selected.group(1), report[-3000:]
    assert int(selected.group(1)) >= 5  # the run really reached the API
