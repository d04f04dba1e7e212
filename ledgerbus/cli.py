"""The ``ledgerbus`` command line.

Each command reads settings, turns configuration mistakes into a one-line error
and a non-zero exit code, and hands real work to the module that owns it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click

from ledgerbus.discovery import NoStackFound, resolve_endpoints
from ledgerbus.embedded.lock import DataDirBusy
from ledgerbus.embedded.ports import PortInUse
from ledgerbus.settings import Settings, SettingsError, load_settings
from ledgerbus.supervisor import StartupError

P = ParamSpec("P")
R = TypeVar("R")

#: Configuration and environment errors: shown as one clear line, exit code 2.
USER_ERRORS = (SettingsError, PortInUse, DataDirBusy, NoStackFound, StartupError)


def clear_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print known failures without a traceback and exit non-zero."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """ledgerbus: event-sourced message bus for AI agent workforces."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll


def settings() -> Settings:
    return load_settings()


@main.command()
@clear_errors
def dev() -> None:
    """Start the whole system on the embedded stack, in the foreground."""
    from ledgerbus.dev import run_dev

    sys.exit(asyncio.run(run_dev(settings())))


@main.command()
@clear_errors
def gateway() -> None:
    """Serve the HTTP API (uses LEDGERBUS_* endpoints or a running `ledgerbus dev`)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.health import ComponentCheck
    from ledgerbus.probes import kafka_probe, postgres_probe, redis_probe

    config = settings()
    endpoints = resolve_endpoints(config)
    checks = [
        ComponentCheck("kafka", endpoints.kafka_bootstrap, kafka_probe(endpoints.kafka_bootstrap)),
        ComponentCheck("postgres", endpoints.database_url, postgres_probe(endpoints.database_url)),
        ComponentCheck("redis", endpoints.redis_url, redis_probe(endpoints.redis_url)),
    ]
    uvicorn.run(
        create_app(checks),
        host=config.gateway_host,
        port=config.gateway_port,
        log_level="info",
        access_log=False,
    )
