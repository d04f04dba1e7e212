"""What every command shares: settings loading and turning known failures into clear errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click

from ledgerbus.bus import NoRegistry
from ledgerbus.discovery import NoStackFound
from ledgerbus.embedded.lock import DataDirBusy
from ledgerbus.embedded.ports import PortInUse
from ledgerbus.settings import Settings, SettingsError, load_settings
from ledgerbus.supervisor import StartupError
from producers.publisher import InvalidEvent, PublishError
from schemas.catalog import UnknownEventType

P = ParamSpec("P")
R = TypeVar("R")

#: Configuration and environment errors: shown as one clear line, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (
    SettingsError,
    PortInUse,
    DataDirBusy,
    NoStackFound,
    StartupError,
    NoRegistry,
    UnknownEventType,
    InvalidEvent,
    PublishError,
)


def clear_errors(*extra: type[Exception]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Print known failures (``USER_ERRORS`` plus ``extra``) as one line; exit 2."""
    known = USER_ERRORS + extra

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except known as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)

        return wrapper

    return decorate


def settings() -> Settings:
    return load_settings()
