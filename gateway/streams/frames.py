"""One event as a stream sends it: an id to resume from and the event's JSON.

The JSON is what ``ledgerbus tail`` prints (the envelope), with ``position``
first when the event comes from the archive, as ``ledgerbus replay`` prints it.
The id says where the subscriber stands: an archive position for catch-up
events (they arrive in position order), the event id for live ones (they
arrive in the hub's order, which has no position yet). Webhook secrets are
redacted, as in the audit replay.
"""

from __future__ import annotations

from typing import Any

from gateway.redaction import without_secrets
from schemas.models import Envelope


def event_json(event: Envelope[Any], position: int | None = None) -> str:
    text = without_secrets(event).model_dump_json()
    return text if position is None else f'{{"position":{position},{text[1:]}'


class Frame:
    """Built once per live event and shared by every subscriber that gets it."""

    __slots__ = ("_sse", "data", "id")

    def __init__(self, id: str, data: str) -> None:
        self.id = id
        self.data = data
        self._sse: bytes | None = None

    @classmethod
    def live(cls, event: Envelope[Any]) -> Frame:
        return cls(str(event.id), event_json(event))

    @classmethod
    def archived(cls, position: int, event: Envelope[Any]) -> Frame:
        return cls(str(position), event_json(event, position))

    def sse(self) -> bytes:
        """The Server-Sent Events message (JSON has no raw newlines: one data line)."""
        if self._sse is None:
            self._sse = f"id: {self.id}\ndata: {self.data}\n\n".encode()
        return self._sse
