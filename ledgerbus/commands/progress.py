"""Progress of long-running commands: a count and a rate on stderr, at most once a second.

Plain lines rather than a redrawn bar, so progress stays readable in logs and CI.
"""

from __future__ import annotations

import time

import click


class Progress:
    def __init__(self, label: str, interval: float = 1.0) -> None:
        self.label = label
        self.interval = interval
        self.count = 0
        self._began = self._shown = time.monotonic()

    def add(self, count: int = 1) -> None:
        self.count += count
        now = time.monotonic()
        if now - self._shown >= self.interval:
            self._shown = now
            self._show(now)

    def done(self) -> None:
        self._show(time.monotonic())

    def _show(self, now: float) -> None:
        elapsed = now - self._began
        rate = self.count / elapsed if elapsed > 0 else 0.0
        click.echo(
            f"{self.label}: {self.count:,} events in {elapsed:.1f}s ({rate:,.0f}/s)", err=True
        )
