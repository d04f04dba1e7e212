"""Assembling the bus's pieces from settings, for the CLI and long-running processes.

Lower layers take explicit dependencies; this is the one place that reads
settings and endpoints and wires catalogue, registry, serde and Kafka clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ledgerbus.discovery import resolve_endpoints
from ledgerbus.embedded.stack import Endpoints
from ledgerbus.settings import Settings
from producers.publisher import Publisher
from producers.topics import ensure_topics
from schemas.catalog import EventCatalog, default_catalog
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer


class NoRegistry(RuntimeError):
    """No schema registry is configured or running."""


def catalog_for(settings: Settings) -> EventCatalog:
    if settings.schema_dirs:
        return EventCatalog.load(extra_dirs=settings.schema_dirs)
    return default_catalog()


@dataclass
class Bus:
    """What a client of the bus holds: endpoints, catalogue, registry, serde."""

    settings: Settings
    endpoints: Endpoints
    catalog: EventCatalog
    registry: RegistryClient

    def serializer(self) -> EventSerializer:
        return EventSerializer(self.catalog, self.registry, self.settings.topic_prefix)

    def deserializer(self) -> EventDeserializer:
        return EventDeserializer(self.catalog, self.registry)

    def topics(self) -> list[str]:
        prefix = self.settings.topic_prefix
        return sorted({f"{prefix}ledgerbus.{event_type.topic.name}" for event_type in self.catalog})


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Bus]:
    endpoints = resolve_endpoints(settings)
    if not endpoints.schema_registry_url:
        raise NoRegistry(
            "no schema registry: set LEDGERBUS_SCHEMA_REGISTRY_URL or start `ledgerbus dev`"
        )
    registry = RegistryClient(endpoints.schema_registry_url)
    try:
        yield Bus(settings, endpoints, catalog_for(settings), registry)
    finally:
        await registry.aclose()


@asynccontextmanager
async def publishing(bus: Bus, source: str) -> AsyncIterator[Publisher]:
    """A started publisher whose topics exist."""
    await ensure_topics(bus.endpoints.kafka_bootstrap, bus.settings.topic_prefix)
    async with Publisher(bus.endpoints.kafka_bootstrap, bus.serializer(), source=source) as pub:
        yield pub
