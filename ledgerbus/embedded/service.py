"""Services the supervisor runs: child processes and probed external servers."""

from __future__ import annotations

import asyncio
import signal

from ledgerbus.embedded.process import ChildProcess
from ledgerbus.probes import Probe, wait_until_ready


class ProcessService:
    """A child process plus the probe that says it is ready."""

    restartable = False

    def __init__(
        self,
        name: str,
        process: ChildProcess,
        probe: Probe,
        endpoint: str,
        *,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.process = process
        self.probe = probe
        self._endpoint = endpoint
        self.stop_signal = stop_signal

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def start(self) -> None:
        self.process.start()

    async def wait_ready(self, timeout: float) -> None:
        try:
            await wait_until_ready(
                self.probe, timeout=timeout, alive=lambda: self.process.exit_code() is None
            )
        except (RuntimeError, TimeoutError) as exc:
            tail = self.process.log_tail()
            raise RuntimeError(f"{exc}; log {self.process.log_path}:\n{tail}") from exc

    async def stop(self) -> None:
        await asyncio.to_thread(self.process.stop, self.stop_signal)

    def exited(self) -> int | None:
        return self.process.exit_code()


class RestartableProcessService(ProcessService):
    """A ledgerbus process (gateway, processors…): restarted if it dies."""

    restartable = True


class ExternalService:
    """A server someone else runs: we only probe it."""

    restartable = False
    pid = None

    def __init__(self, name: str, endpoint: str, probe: Probe) -> None:
        self.name = name
        self._endpoint = endpoint
        self.probe = probe

    @property
    def endpoint(self) -> str:
        return self._endpoint

    async def start(self) -> None:
        return None

    async def wait_ready(self, timeout: float) -> None:
        await wait_until_ready(self.probe, timeout=timeout, interval=0.25)

    async def stop(self) -> None:
        return None

    def exited(self) -> int | None:
        return None
