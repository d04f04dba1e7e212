"""Archived rows back into events.

The store keeps each event's canonical bytes: the Kafka value without its
5-byte Confluent header. Putting the header back (magic byte 0, schema id)
gives bytes the ordinary deserializer reads, with the same schema resolution
as a live consumer, so an old row decodes under today's schema.
"""

from __future__ import annotations

import struct
from typing import Any

from schemas.models import Envelope
from schemas.serde import MAGIC_BYTE, EventDeserializer

_HEADER = struct.Struct(">bI")


def framed(schema_id: int, body: bytes) -> bytes:
    """The Kafka value an archived body came from."""
    return _HEADER.pack(MAGIC_BYTE, schema_id) + body


async def decode(deserializer: EventDeserializer, schema_id: int, body: bytes) -> Envelope[Any]:
    """The validated event of an archived row; ``DecodeError`` if it cannot be read."""
    return await deserializer.deserialize(framed(schema_id, body))
