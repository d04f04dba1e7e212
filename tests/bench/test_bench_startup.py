"""Cold start and warm restart of ``ledgerbus dev``; RSS of each piece at idle.

Prints figures (median of 5); asserts only that the runs worked, never time.
Run with ``make bench``.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import psutil

from tests.support.devproc import DevProcess

RUNS = 5
LINE = re.compile(r"^\s+(\w+)\s+\S+\s+ready in\s+([\d.]+)s", re.MULTILINE)
TOTAL = re.compile(r"^ready in ([\d.]+)s", re.MULTILINE)


def _one_start(workdir: Path) -> tuple[dict[str, float], float, dict[str, float]]:
    dev = DevProcess(workdir)
    began = time.monotonic()
    dev.start()
    state = dev.wait_ready()
    wall = time.monotonic() - began
    pieces = {name: float(seconds) for name, seconds in LINE.findall(dev.output)}
    total = TOTAL.search(dev.output)
    assert total is not None
    pieces["total (supervisor)"] = float(total.group(1))
    time.sleep(1.0)  # idle
    rss = {}
    for name, pid in state["pids"].items():
        proc = psutil.Process(pid)
        rss[name] = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
    assert dev.stop() == 0
    return pieces, wall, rss


def _report(title: str, runs: list[tuple[dict[str, float], float, dict[str, float]]]) -> None:
    print(f"\n{title} (median of {len(runs)}):")
    for name in runs[0][0]:
        print(f"  {name:<20} {statistics.median(r[0][name] for r in runs):6.2f} s")
    print(f"  {'process wall clock':<20} {statistics.median(r[1] for r in runs):6.2f} s")
    print("  RSS at idle:")
    for name in runs[0][2]:
        print(f"  {name:<20} {statistics.median(r[2][name] for r in runs):6.1f} MiB")


def test_cold_and_warm_start(tmp_path: Path) -> None:
    cold = []
    for i in range(RUNS):
        workdir = tmp_path / f"cold{i}"
        workdir.mkdir()
        cold.append(_one_start(workdir))
    warm_dir = tmp_path / "cold0"
    warm = [_one_start(warm_dir) for _ in range(RUNS)]
    _report("cold start (new data dir: initdb included)", cold)
    _report("warm restart (existing data dir)", warm)
    assert all(run[0]["total (supervisor)"] > 0 for run in cold + warm)
