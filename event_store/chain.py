"""The per-tenant audit hash chain.

``hash_n = SHA-256(hash_{n-1} || canonical_bytes_n)``, with ``hash_0`` = 32 zero
bytes (:data:`GENESIS`).

**Canonical bytes** of an event are the Avro binary encoding of the whole event
record (envelope fields followed by ``data``) under the writer schema that the
event's ``schema_id`` names in the schema registry: exactly the Kafka value
with its 5-byte Confluent header (magic byte 0 + 4-byte schema id) removed.
They are stored verbatim in ``events.body`` and never re-encoded, so a
verifier needs only the stored (or exported) bytes to recompute the chain; the
schema is needed only to *read* them, not to check them. Since the envelope is
inside those bytes, the chain covers the event's id, type, subject, tenant and
time too.
"""

from __future__ import annotations

import hashlib

#: ``hash_0``: what the first event of every tenant chains onto.
GENESIS = bytes(32)


def link(prev_hash: bytes, canonical_bytes: bytes) -> bytes:
    """The chain hash of an event whose predecessor's hash is ``prev_hash``."""
    return hashlib.sha256(prev_hash + canonical_bytes).digest()
