"""Local ``.avsc`` files vs what the registry holds: would publishing them break readers?

Every registered version of each event type's subject is checked (not just the
latest), so a change that is compatible with the last version but not with an
older one is caught under the transitive levels, as the registry will when the
schema is registered.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.catalog import EventCatalog, EventType
from schemas.registry_client import RegistryClient
from schemas.serde import subject_name


@dataclass(frozen=True)
class SubjectCheck:
    event_type: str
    subject: str
    status: str  # "new", "compatible" or "incompatible"
    versions: tuple[int, ...]
    reasons: tuple[str, ...] = ()


async def check_event_type(registry: RegistryClient, event_type: EventType) -> SubjectCheck:
    subject = subject_name(event_type)
    versions = tuple(await registry.versions(subject))
    if not versions:
        return SubjectCheck(event_type.name, subject, "new", versions)
    reasons: list[str] = []
    for version in versions:
        result = await registry.check_compatibility(subject, event_type.schema, version=version)
        reasons.extend(result.messages)
    status = "incompatible" if reasons else "compatible"
    return SubjectCheck(event_type.name, subject, status, versions, tuple(reasons))


async def check_catalog(registry: RegistryClient, catalog: EventCatalog) -> list[SubjectCheck]:
    return [await check_event_type(registry, event_type) for event_type in catalog]
