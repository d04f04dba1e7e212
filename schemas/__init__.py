"""Event schemas: the `.avsc` source of truth, their pydantic mirrors, the topic catalogue.

This is the bottom layer: it imports nothing from other ledgerbus packages.

- `avro/`: `envelope.avsc` and one payload schema per event type, at
  `avro/<domain>/<action>.avsc` for type `<domain>.<action>`;
- `models/`: `Envelope` and one `EventPayload` subclass per event type;
- `catalog`: event types by name, with composed and parsed schemas and their topic;
- `topics`: logical topics, their settings and physical names;
- `records`, `conformance`, `micros`: model -> Avro dict, model/schema agreement,
  exact timestamp conversion.
"""

from schemas.catalog import EventCatalog, EventType, SchemaError, UnknownEventType, default_catalog
from schemas.models import Envelope, EventPayload

__all__ = [
    "Envelope",
    "EventCatalog",
    "EventPayload",
    "EventType",
    "SchemaError",
    "UnknownEventType",
    "default_catalog",
]
