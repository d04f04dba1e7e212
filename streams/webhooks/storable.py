"""Text PostgreSQL can store: NUL characters replaced.

PostgreSQL ``text`` and ``jsonb`` reject NUL, and event fields may carry one
(a receiver's response body, any producer's strings). A projection that
failed on it would be stuck on that event for good, so projections store the
replacement character instead: deterministic, so rebuilds agree.
"""

from __future__ import annotations

from typing import Any


def storable(value: Any) -> Any:
    """``value`` with NUL replaced in every string, through lists and dicts."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {key: storable(item) for key, item in value.items()}
    return value
