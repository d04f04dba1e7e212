"""What every long-running ``ledgerbus`` process shares: a metrics port and a clean stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import TypeVar

import click

from ledgerbus.embedded.ports import claim_port

F = TypeVar("F", bound=Callable[..., object])


def metrics_options(func: F) -> F:
    """``--metrics-port`` (0 = any free port, logged) and ``--metrics-host``."""
    func = click.option(
        "--metrics-host",
        default="127.0.0.1",
        show_default=True,
        help="Address /metrics listens on.",
    )(func)
    return click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        default=0,
        show_default=True,
        help="Prometheus /metrics port (also the readiness probe); 0 = any free port, logged.",
    )(func)


def check_metrics_port(port: int, host: str) -> None:
    """Fail before touching anything when a fixed port is taken, naming the option."""
    if port:
        claim_port(port, setting="--metrics-port", host=host)


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT ask for a graceful stop (finish the batch in hand) instead of dying."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
