"""Supervisor ordering with in-memory services (no servers needed for the logic)."""

from __future__ import annotations

import pytest

from ledgerbus.supervisor import StartupError, Supervisor


class Recorded:
    """A service that records what happened to it in a shared journal."""

    restartable = False
    pid = None

    def __init__(self, name: str, journal: list[str], *, fail: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.fail = fail
        self.exit_code: int | None = None

    @property
    def endpoint(self) -> str:
        return f"mem://{self.name}"

    async def start(self) -> None:
        self.journal.append(f"start {self.name}")

    async def wait_ready(self, timeout: float) -> None:
        if self.fail:
            raise ConnectionError("refused")
        self.journal.append(f"ready {self.name}")

    async def stop(self) -> None:
        self.journal.append(f"stop {self.name}")

    def exited(self) -> int | None:
        return self.exit_code


async def test_stages_start_in_order_and_stop_in_reverse() -> None:
    journal: list[str] = []
    a, b, c = (Recorded(n, journal) for n in "abc")
    supervisor = Supervisor([[a, b], [c]])
    report = await supervisor.start()
    assert [started.name for started in report] == ["a", "b", "c"]
    assert journal.index("ready a") < journal.index("start c")
    assert journal.index("ready b") < journal.index("start c")
    journal.clear()
    await supervisor.stop()
    assert journal == ["stop c", "stop b", "stop a"]


async def test_failed_start_stops_what_started_and_names_the_service() -> None:
    journal: list[str] = []
    a = Recorded("a", journal)
    broken = Recorded("broken", journal, fail=True)
    never = Recorded("never", journal)
    supervisor = Supervisor([[a], [broken], [never]])
    with pytest.raises(StartupError, match="broken failed to start: refused"):
        await supervisor.start()
    assert "start never" not in journal
    assert journal[-2:] == ["stop broken", "stop a"]


async def test_watch_reports_a_dead_service() -> None:
    journal: list[str] = []
    a = Recorded("a", journal)
    supervisor = Supervisor([[a]])
    await supervisor.start()
    a.exit_code = 137
    assert await supervisor.watch(interval=0.01) == "a exited with code 137"
    await supervisor.stop()
