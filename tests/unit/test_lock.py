from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledgerbus.embedded.lock import DataDirBusy, DataDirLock


def test_second_holder_is_refused_with_the_pid(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(DataDirBusy, match=f"pid {os.getpid()}"):
        DataDirLock(tmp_path).acquire()
    first.release()
    again = DataDirLock(tmp_path)
    again.acquire()
    again.release()


def test_stale_lock_file_from_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "ledgerbus.lock").write_text("999999999\n")
    lock = DataDirLock(tmp_path)
    lock.acquire()
    assert (tmp_path / "ledgerbus.lock").read_text() == f"{os.getpid()}\n"
    lock.release()
