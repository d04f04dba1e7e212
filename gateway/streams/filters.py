"""What a subscriber asked for: event type globs and a subject.

Globs are checked before a stream opens, so a typo is a 422 rather than a
stream that stays silent forever. Only ``*`` and ``?`` are wildcards: the same
glob must mean the same thing to `fnmatch` (live events) and to the event
store's LIKE (catch-up), which has no character classes.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from event_store.store import EventQuery
from schemas.catalog import EventCatalog

_GLOB = re.compile(r"[a-z0-9_.*?]+")


class InvalidFilter(ValueError):
    """A filter that cannot match anything; ``path`` names the parameter."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class StreamFilter:
    """Empty ``types`` means every type; ``subject`` None means every subject."""

    types: tuple[str, ...] = ()
    subject: str | None = None

    def matches_type(self, event_type: str) -> bool:
        return not self.types or any(fnmatchcase(event_type, glob) for glob in self.types)

    def query(self, from_position: int) -> EventQuery:
        """The same filter over the archive, from ``from_position`` (inclusive)."""
        return EventQuery(from_position=from_position, subject=self.subject, types=self.types)


def parse_types(catalog: EventCatalog, values: Iterable[str]) -> tuple[str, ...]:
    """Globs from repeated and/or comma-separated ``types`` parameters.

    Each must be non-empty, use only event-type characters plus ``*``/``?``, and
    match at least one type the gateway knows (else the closest names are given).
    """
    known = [event_type.name for event_type in catalog]
    globs: list[str] = []
    for value in values:
        for part in value.split(","):
            glob = part.strip()
            if not glob:
                raise InvalidFilter("query.types", "empty event type glob")
            if not _GLOB.fullmatch(glob):
                raise InvalidFilter(
                    "query.types",
                    f"{glob!r} is not a glob of event types: use lowercase letters, digits,"
                    " '_', '.', and the wildcards '*' and '?'",
                )
            if not any(fnmatchcase(name, glob) for name in known):
                close = difflib.get_close_matches(glob, known, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise InvalidFilter("query.types", f"{glob!r} matches no event type{hint}")
            globs.append(glob)
    return tuple(dict.fromkeys(globs))
