"""One ``ledgerbus dev`` per data directory.

An exclusive ``flock`` on ``<data_dir>/ledgerbus.lock``: the kernel releases it
when the holder dies, even by SIGKILL, so a lock file left by a killed run is
recognised as stale (unlocked) and taken over. The PID inside only serves the
error message.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

import psutil

log = logging.getLogger(__name__)


class DataDirBusy(RuntimeError):
    """Another live process holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "ledgerbus.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DataDirBusy(
                f"data directory {self.path.parent} is in use by another ledgerbus dev "
                f"(pid {holder}); stop it or set LEDGERBUS_DATA_DIR to another folder"
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous.isdigit() and not psutil.pid_exists(int(previous)):
            log.info("removed stale lock of pid %s (killed run)", previous)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
