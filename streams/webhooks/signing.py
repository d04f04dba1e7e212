"""Standard Webhooks signatures (https://www.standardwebhooks.com), by the reference library.

Each attempt is signed afresh (the timestamp is part of the signed content, and
receivers reject stale ones), but ``webhook-id`` is the delivery id, the same on
every retry, which is what receivers deduplicate on.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime
from functools import lru_cache

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
#: Svix and the spec's examples use 24 random bytes (32 base64 characters).
SECRET_BYTES = 24


class InvalidSecret(ValueError):
    """Not a ``whsec_`` secret with a base64 key of at least 16 bytes."""


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` + base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_secret(secret: str) -> str:
    """``secret`` if the library can sign with it and it is long enough to be safe."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("webhook secret is not base64 after 'whsec_'") from None
    if len(key) < 16:
        raise InvalidSecret("webhook secret must hold at least 16 bytes")
    return secret


@lru_cache(maxsize=4096)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def signature_headers(secret: str, webhook_id: str, body: str, at: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent at ``at``."""
    at = at.astimezone(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": _signer(secret).sign(webhook_id, at, body),
    }
