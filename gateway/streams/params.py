"""Stream parameters shared by SSE and WebSocket, checked before a stream opens (422)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from gateway.problems import Problem
from gateway.streams.filters import InvalidFilter, StreamFilter, parse_types
from gateway.streams.session import Resume
from schemas.catalog import EventCatalog


def invalid(path: str, reason: str) -> Problem:
    return Problem(422, f"{path}: {reason}", errors=[{"path": path, "reason": reason}])


def stream_filter(catalog: EventCatalog, types: Sequence[str], subject: str | None) -> StreamFilter:
    if subject is not None and not subject:
        raise invalid("query.subject", "must not be empty")
    try:
        return StreamFilter(parse_types(catalog, types), subject)
    except InvalidFilter as exc:
        raise invalid(exc.path, exc.reason) from None


def last_event_id(text: str, path: str) -> Resume:
    """An SSE event id: an archive position (catch-up events) or an event id (live ones)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return uuid.UUID(text)
    except ValueError:
        raise invalid(path, f"{text!r} is neither an archive position nor an event id") from None


def resume_from(
    last_event: str | None, from_position: int | None, last_event_path: str
) -> Resume | None:
    """Where to resume. ``Last-Event-ID`` wins: a browser's EventSource sends it on
    every reconnect, with the URL (and so ``from_position``) of the first connect."""
    if last_event is not None:
        return last_event_id(last_event, last_event_path)
    if from_position is not None:
        return from_position - 1
    return None
