"""What the API never shows again: webhook signing secrets.

``webhook.subscribed`` carries the endpoint's ``whsec_…`` secret (the stream
processors need it to sign); the create answer is the only place a client
sees it, so every read path (audit replay, SSE, WebSocket) passes events
through `without_secrets`.
"""

from __future__ import annotations

from typing import Any

from schemas.models import Envelope

REDACTED = "[redacted]"


def without_secrets(event: Envelope[Any]) -> Envelope[Any]:
    if getattr(event.data, "secret", None) is None:
        return event
    data = event.data.model_copy(update={"secret": REDACTED})
    return event.model_copy(update={"data": data})
