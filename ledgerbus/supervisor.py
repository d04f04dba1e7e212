"""Start a list of services in stages, watch them, stop them in reverse.

A service is anything with ``start``, ``wait_ready`` and ``stop``: an embedded
server binary, a ledgerbus process (gateway, processors, archiver, agents) or
an external server we only probe. Services in one stage start concurrently;
stages start in order, so later stages may rely on earlier ones being ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

SERVICE_UP = Gauge("ledgerbus_service_up", "1 while a supervised service is running", ["service"])
SERVICE_START_SECONDS = Gauge(
    "ledgerbus_service_start_seconds", "Seconds from start to ready", ["service"]
)
SERVICE_RESTARTS = Counter(
    "ledgerbus_service_restarts_total", "Restarts after an unexpected exit", ["service"]
)


class Service(Protocol):
    """What the supervisor needs of a piece of the system."""

    name: str

    @property
    def endpoint(self) -> str:
        """Where clients reach it (URL or host:port), for humans and /readyz."""
        ...

    @property
    def pid(self) -> int | None:
        """The OS process, if the supervisor owns one."""
        ...

    async def start(self) -> None: ...

    async def wait_ready(self, timeout: float) -> None: ...

    async def stop(self) -> None: ...

    def exited(self) -> int | None:
        """Exit code if the service died on its own, else None."""
        ...

    @property
    def restartable(self) -> bool:
        """Whether an unexpected exit is answered by a restart (vs. shutting down)."""
        ...


class StartupError(RuntimeError):
    """A service could not start; the message says which and why."""


@dataclass(frozen=True)
class Started:
    name: str
    endpoint: str
    seconds: float
    pid: int | None


class Supervisor:
    """Owns the services' lifecycle; nothing here knows what they are."""

    def __init__(
        self,
        stages: Sequence[Sequence[Service]],
        *,
        ready_timeout: float = 60.0,
        on_started: Callable[[Started], None] = lambda started: None,
    ) -> None:
        self.stages = [list(stage) for stage in stages]
        self.ready_timeout = ready_timeout
        self.on_started = on_started
        self._running: list[Service] = []

    @property
    def services(self) -> list[Service]:
        return [service for stage in self.stages for service in stage]

    def get(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    async def start(self) -> list[Started]:
        """Start every stage; on any failure stop what started and raise."""
        report: list[Started] = []
        try:
            for stage in self.stages:
                report += await asyncio.gather(*(self._start_one(s) for s in stage))
        except BaseException:
            await self.stop()
            raise
        return report

    async def _start_one(self, service: Service) -> Started:
        began = time.monotonic()
        self._running.append(service)
        try:
            await service.start()
            await service.wait_ready(self.ready_timeout)
        except StartupError:
            raise
        except Exception as exc:
            raise StartupError(f"{service.name} failed to start: {exc}") from exc
        started = Started(service.name, service.endpoint, time.monotonic() - began, service.pid)
        SERVICE_UP.labels(service.name).set(1)
        SERVICE_START_SECONDS.labels(service.name).set(started.seconds)
        self.on_started(started)
        return started

    async def stop(self) -> None:
        """Stop in reverse start order; one failing stop does not block the rest."""
        while self._running:
            service = self._running.pop()
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)
            SERVICE_UP.labels(service.name).set(0)

    async def watch(self, interval: float = 0.5) -> str:
        """Return the name of the first non-restartable service that dies.

        Restartable services (ledgerbus's own processes) are restarted in place.
        """
        while True:
            for service in list(self._running):
                code = service.exited()
                if code is None:
                    continue
                if not service.restartable:
                    SERVICE_UP.labels(service.name).set(0)
                    return f"{service.name} exited with code {code}"
                log.warning("%s exited with code %s; restarting", service.name, code)
                SERVICE_RESTARTS.labels(service.name).inc()
                await service.start()
                await service.wait_ready(self.ready_timeout)
            await asyncio.sleep(interval)
