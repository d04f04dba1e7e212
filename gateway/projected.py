"""Reading what the stream processors and the projection runner write.

The gateway may serve before any streams worker has created the projection
tables, so a router that reads a projection installs its tables first (the
idempotent DDL, under the projection's lock, as the worker does), once per
app. A command whose outcome a processor decides is answered after a short
wait for that outcome to show in the projection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, Depends

from event_store.projections import Projection, ProjectionRunner
from gateway.problems import problem_responses
from gateway.services import Services

T = TypeVar("T")

#: How often ``wait_for`` looks again.
POLL_SECONDS = 0.05


class ProjectionTables:
    """A router dependency: ``Depends(ProjectionTables(p).ready)`` before reading ``p``."""

    def __init__(self, *projections: Projection) -> None:
        self.projections = projections
        self._installed = False

    async def ready(self, services: Services) -> None:
        if self._installed:
            return
        runner = ProjectionRunner(services.pool, self.projections, services.deserializer)
        await runner.install()
        self._installed = True


def projection_router(name: str, *projections: Projection) -> APIRouter:
    """The router of ``/v1/<name>``, which reads ``projections``: their tables are
    installed before its first request is answered."""
    tables = ProjectionTables(*projections)
    return APIRouter(
        prefix=f"/v1/{name}",
        tags=[name],
        responses=problem_responses(401, 403, 429),
        dependencies=[Depends(tables.ready)],
    )


async def wait_for(found: Callable[[], Awaitable[T | None]], seconds: float) -> T | None:
    """``found()``'s first result that is not None, or None after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        result = await found()
        if result is not None or loop.time() >= deadline:
            return result
        await asyncio.sleep(POLL_SECONDS)
