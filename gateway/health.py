"""Liveness and readiness.

``/healthz`` answers while the process runs; ``/readyz`` asks every dependency
a real question (the probes are passed in by whoever builds the app) and
reports each one's status and endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse


@dataclass(frozen=True)
class ComponentCheck:
    """A named dependency, where it lives, and how to ask if it answers."""

    name: str
    endpoint: str
    probe: Callable[[], Awaitable[None]]
    #: A dependency the gateway can serve without (e.g. rate limits failing open)
    #: is reported but does not make ``/readyz`` fail.
    required: bool = True
    #: Shown with the status, e.g. how the gateway behaves while it is down.
    note: str = ""


async def _run(check: ComponentCheck, timeout: float) -> dict[str, Any]:
    began = time.perf_counter()
    result: dict[str, Any] = {"endpoint": check.endpoint, "required": check.required}
    if check.note:
        result["note"] = check.note
    try:
        await asyncio.wait_for(check.probe(), timeout)
    except Exception as exc:
        return {"status": "down", **result, "error": str(exc) or type(exc).__name__}
    latency_ms = round((time.perf_counter() - began) * 1000, 1)
    return {"status": "up", **result, "latency_ms": latency_ms}


def health_router(checks: Sequence[ComponentCheck], timeout: float = 2.0) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        results = await asyncio.gather(*(_run(check, timeout) for check in checks))
        components = {check.name: result for check, result in zip(checks, results, strict=True)}
        ready = all(
            result["status"] == "up"
            for check, result in zip(checks, results, strict=True)
            if check.required
        )
        body = {"status": "ready" if ready else "not_ready", "components": components}
        return JSONResponse(body, status_code=200 if ready else 503)

    return router
