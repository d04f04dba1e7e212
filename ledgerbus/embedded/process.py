"""Child processes that cannot outlive their parent.

Every embedded server runs as a direct child of the supervisor with
``PR_SET_PDEATHSIG`` set, so the kernel signals it the moment the supervisor
dies, even by SIGKILL. ``preexec_fn`` runs after CPython's own ``setuid``, so
the death signal survives the switch to an unprivileged user (the kernel clears
it on credential changes).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int, parent_pid: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies."""
    if sys.platform != "linux":  # other kernels have no PDEATHSIG; best effort
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died between fork() and prctl(): then nobody will
    # signal us, so exit now rather than run as an orphan.
    if os.getppid() != parent_pid:
        os._exit(1)


def as_user(user: str | None) -> dict[str, Any]:
    """``Popen`` arguments that drop to ``user`` with *its* groups only.

    Setting just ``user=`` would keep root's group 0, and group bits (often
    ``---`` on 0700 folders) would then deny what the ``o+x`` bits allow.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class ChildProcess:
    """One server binary run in the foreground, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        death_signal: int = signal.SIGKILL,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.death_signal = death_signal
        self.user = user
        self.env = env
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        """Spawn the process. Call from a long-lived thread: PDEATHSIG fires
        when the *thread* that forked exits, not only the process."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent_pid = os.getpid()
        death_signal = self.death_signal
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **as_user(self.user),
                env=self.env,
                cwd=self.cwd,
                # fork-safe: prctl and getppid only, no locks or allocation
                preexec_fn=lambda: _die_with_parent(death_signal, parent_pid),  # noqa: PLW1509
            )

    def exit_code(self) -> int | None:
        """None while running, else the exit status."""
        return None if self._popen is None else self._popen.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the log, to explain a failed start."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the process and wait; SIGKILL it if it does not exit in time."""
        if self._popen is None or self._popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._popen.send_signal(sig)
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
