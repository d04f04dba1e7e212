"""One ``ledgerbus streams`` worker: the faust app, its processors and the projection runner.

Any number of workers may run: faust spreads the partitions over them, the
projection runner's advisory locks keep the runners from interleaving, and
the decisions' row locks (``streams.context``) fence a worker that lost its
partitions but has not noticed yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import faust
from mode import Service

from event_store.projections import Projection, ProjectionRunner
from streams.app import StreamsConfig, create_app
from streams.context import StreamsContext
from streams.processor import Processor

log = logging.getLogger("ledgerbus.streams")


class ProjectionService(Service):
    """Keeps every projection current with the archive, inside the worker."""

    def __init__(self, context: StreamsContext, projections: Sequence[Projection]) -> None:
        super().__init__()
        self.context = context
        self.projections = projections
        self._runner: ProjectionRunner | None = None
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._runner = ProjectionRunner(
            self.context.pool, self.projections, self.context.deserializer, poll_interval=0.2
        )
        await self._runner.install()
        self._task = asyncio.create_task(self._runner.run())

    async def on_stop(self) -> None:
        if self._runner is not None and self._task is not None:
            self._runner.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class StreamsWorker(faust.Worker):
    """A faust worker that reports readiness once its partitions are assigned, and
    that exits even when a graceful stop hangs (faust's consumer thread can wait
    for minutes on a broker that went away)."""

    def __init__(
        self,
        app: faust.App,
        *services: Any,
        on_ready: Callable[[], None],
        stop_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, *services, **kwargs)
        self._on_ready = on_ready
        self._stop_timeout = stop_timeout

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        self._on_ready()

    def on_worker_shutdown(self) -> None:
        super().on_worker_shutdown()
        watchdog = threading.Timer(self._stop_timeout, _exit_hung)
        watchdog.daemon = True
        watchdog.start()


def _exit_hung() -> None:
    log.error(
        "graceful stop hung; exiting (uncommitted input is redelivered, decisions are idempotent)"
    )
    os._exit(1)


def build_worker(
    config: StreamsConfig,
    context: StreamsContext,
    processors: Sequence[Processor],
    projections: Sequence[Projection],
    *,
    on_ready: Callable[[], None],
    loop: asyncio.AbstractEventLoop,
    stop_timeout: float = 30.0,
    loglevel: str = "WARNING",
) -> StreamsWorker:
    """The worker, with the context (pool, publisher) and the projection runner
    started before the app, so agents never see a half-opened context."""
    app = create_app(config)
    for processor in processors:
        processor.install(app, config, context)
    log.info("processors: %s", ", ".join(p.name for p in processors) or "none")
    runner = ProjectionService(context, projections)
    return StreamsWorker(
        app,
        context,
        runner,
        on_ready=on_ready,
        stop_timeout=stop_timeout,
        loop=loop,
        loglevel=loglevel,
        redirect_stdouts=False,
        override_logging=False,
    )
