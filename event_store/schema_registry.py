"""The schema registry's state in PostgreSQL: schemas, subjects' versions, compatibility levels.

Semantics follow Confluent Schema Registry, so Confluent's clients and serdes work
against it unchanged: a schema has one global id whatever subjects use it;
registering a schema a subject already has returns its existing version; a new
version must be compatible with earlier ones at the subject's level (global
default BACKWARD_TRANSITIVE); deletes are soft first (the id stays readable, so
old events still decode) and permanent only after that.

Every write to a subject first locks that subject's row, so concurrent writers
(several gateways, several tasks) take turns and the compatibility check always
sees the versions it is checking against; unique constraints back this up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import asyncpg
import avro.schema

from schemas.compatibility import Compatibility, CompatibilityResult, check, parse

#: A version number, or the subject's highest (live) one.
Version = int | Literal["latest"]


class Visibility(Enum):
    """Which versions an operation sees: soft-deleted ones are hidden unless asked for."""

    LIVE = (True, False)
    WITH_DELETED = (True, True)
    DELETED_ONLY = (False, True)


@dataclass(frozen=True)
class RegisteredSchema:
    subject: str
    version: int
    schema_id: int
    schema: str


class RegistryError(Exception):
    """A request the registry cannot satisfy; each subclass is one Confluent error."""


class SubjectNotFound(RegistryError):
    def __init__(self, subject: str) -> None:
        super().__init__(f"Subject '{subject}' not found.")


class VersionNotFound(RegistryError):
    def __init__(self, version: Version) -> None:
        super().__init__(f"Version {version} not found.")


class SchemaNotFound(RegistryError):
    def __init__(self, schema_id: int | None = None) -> None:
        super().__init__(
            "Schema not found" if schema_id is None else f"Schema {schema_id} not found"
        )


class SubjectSoftDeleted(RegistryError):
    def __init__(self, subject: str) -> None:
        super().__init__(
            f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
        )


class SubjectNotSoftDeleted(RegistryError):
    def __init__(self, subject: str) -> None:
        super().__init__(
            f"Subject '{subject}' was not deleted first before being permanently deleted"
        )


class VersionSoftDeleted(RegistryError):
    def __init__(self, subject: str, version: int) -> None:
        super().__init__(
            f"Subject '{subject}' Version {version} was soft deleted. "
            "Set permanent=true to delete permanently"
        )


class VersionNotSoftDeleted(RegistryError):
    def __init__(self, subject: str, version: int) -> None:
        super().__init__(
            f"Subject '{subject}' Version {version} was not deleted first "
            "before being permanently deleted"
        )


class SubjectCompatibilityNotSet(RegistryError):
    def __init__(self, subject: str) -> None:
        super().__init__(
            f"Subject '{subject}' does not have subject-level compatibility configured"
        )


class IncompatibleSchema(RegistryError):
    def __init__(self, subject: str, messages: Sequence[str]) -> None:
        self.messages = list(messages)
        super().__init__(
            "Schema being registered is incompatible with an earlier schema"
            f' for subject "{subject}", details: {"; ".join(self.messages)}'
        )


def canonical(schema: avro.schema.Schema) -> str:
    """The stored and served text: avro's full JSON of the schema, compact.

    Not Avro's Parsing Canonical Form, which drops docs, defaults and aliases and
    so would merge schemas that behave differently. This form only normalises
    layout (whitespace, key order, name qualification), so texts that differ
    only in layout share one id.
    """
    return json.dumps(schema.to_json(), separators=(",", ":"))


def _fingerprint(text: str) -> bytes:
    """The dedup key of a canonical text."""
    return hashlib.sha256(text.encode()).digest()


def _visible(deleted: str, first: int) -> str:
    """SQL condition: the `deleted` column matches a `Visibility` bound at $first, $first+1."""
    return f"((NOT {deleted} AND ${first}) OR ({deleted} AND ${first + 1}))"


_VERSIONS = f"""
SELECT v.subject, v.version, v.schema_id, s.schema, v.deleted
FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
WHERE v.subject = $1 AND {_visible("v.deleted", 2)}
"""

_SOFT_DELETE = "UPDATE registry_versions SET deleted = true"


class SchemaRegistryStore:
    """The registry's operations on an asyncpg pool (the database must be migrated)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def register(self, subject: str, schema: str) -> RegisteredSchema:
        """Add `schema` to `subject` if compatible, or return the version it already is."""
        parsed = parse(schema)
        text = canonical(parsed)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO registry_subjects (subject) VALUES ($1) ON CONFLICT DO NOTHING",
                subject,
            )
            level = await conn.fetchval(
                "SELECT COALESCE(s.compatibility, c.compatibility)"
                " FROM registry_subjects s CROSS JOIN registry_config c"
                " WHERE s.subject = $1 FOR UPDATE OF s",
                subject,
            )
            rows = await conn.fetch(
                _VERSIONS + " ORDER BY v.version", subject, *Visibility.LIVE.value
            )
            for row in rows:
                if row["schema"] == text:
                    return _registered(row)
            previous = {row["version"]: parse(row["schema"]) for row in rows}
            result = check(parsed, previous, Compatibility(level))
            if not result.compatible:
                raise IncompatibleSchema(subject, result.messages)
            schema_id = await _schema_id(conn, text)
            version = await conn.fetchval(
                "INSERT INTO registry_versions (subject, version, schema_id)"
                " SELECT $1, COALESCE(max(version), 0) + 1, $2"
                " FROM registry_versions WHERE subject = $1 RETURNING version",
                subject,
                schema_id,
            )
        return RegisteredSchema(subject, version, schema_id, text)

    async def lookup(
        self, subject: str, schema: str, visibility: Visibility = Visibility.LIVE
    ) -> RegisteredSchema:
        """The version of `subject` holding `schema` (a live one when there are several)."""
        key = _fingerprint(canonical(parse(schema)))
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                _VERSIONS + " AND s.fingerprint = $4 ORDER BY v.deleted, v.version DESC LIMIT 1",
                subject,
                *visibility.value,
                key,
            )
            if row is None:
                await _require_subject(conn, subject, visibility)
                raise SchemaNotFound
        return _registered(row)

    async def schema(self, schema_id: int) -> str:
        """A schema's text by global id; soft-deleted versions do not hide it."""
        text: str | None = await self._pool.fetchval(
            "SELECT schema FROM registry_schemas WHERE id = $1", schema_id
        )
        if text is None:
            raise SchemaNotFound(schema_id)
        return text

    async def schema_versions(
        self, schema_id: int, visibility: Visibility = Visibility.LIVE
    ) -> list[tuple[str, int]]:
        """Every (subject, version) using the schema."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT FROM registry_schemas WHERE id = $1)", schema_id
            ):
                raise SchemaNotFound(schema_id)
            rows = await conn.fetch(
                "SELECT subject, version FROM registry_versions"
                f" WHERE schema_id = $1 AND {_visible('deleted', 2)}"
                " ORDER BY subject, version",
                schema_id,
                *visibility.value,
            )
        return [(row["subject"], row["version"]) for row in rows]

    async def subjects(
        self, visibility: Visibility = Visibility.LIVE, prefix: str = ""
    ) -> list[str]:
        """Subjects with at least one version in `visibility`, sorted."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT subject FROM registry_versions"
            f" WHERE {_visible('deleted', 1)} AND starts_with(subject, $3)"
            " ORDER BY subject",
            *visibility.value,
            prefix,
        )
        return [row["subject"] for row in rows]

    async def versions(self, subject: str, visibility: Visibility = Visibility.LIVE) -> list[int]:
        rows = await self._pool.fetch(_VERSIONS + " ORDER BY v.version", subject, *visibility.value)
        if not rows:
            raise SubjectNotFound(subject)
        return [row["version"] for row in rows]

    async def version(
        self, subject: str, version: Version, visibility: Visibility = Visibility.LIVE
    ) -> RegisteredSchema:
        async with self._pool.acquire() as conn:
            row = await _version_row(conn, subject, version, visibility)
        return _registered(row)

    async def delete_subject(self, subject: str, *, permanent: bool = False) -> list[int]:
        """Soft-delete every live version, or permanently drop a soft-deleted subject."""
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_existing_subject(conn, subject)
            live = await conn.fetch(_VERSIONS, subject, *Visibility.LIVE.value)
            if permanent:
                if live:
                    raise SubjectNotSoftDeleted(subject)
                rows = await conn.fetch(
                    "DELETE FROM registry_versions WHERE subject = $1 RETURNING version", subject
                )
                if not rows:
                    raise SubjectNotFound(subject)
                await conn.execute("DELETE FROM registry_subjects WHERE subject = $1", subject)
            else:
                if not live:
                    await _require_subject(conn, subject, Visibility.WITH_DELETED)
                    raise SubjectSoftDeleted(subject)
                rows = await conn.fetch(
                    f"{_SOFT_DELETE} WHERE subject = $1 AND NOT deleted RETURNING version", subject
                )
        return sorted(row["version"] for row in rows)

    async def delete_version(
        self, subject: str, version: Version, *, permanent: bool = False
    ) -> int:
        """Soft-delete a live version, or permanently drop a soft-deleted one."""
        soft_latest = version == "latest" and not permanent
        visibility = Visibility.LIVE if soft_latest else Visibility.WITH_DELETED
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_existing_subject(conn, subject)
            row = await _version_row(conn, subject, version, visibility)
            number: int = row["version"]
            if permanent and not row["deleted"]:
                raise VersionNotSoftDeleted(subject, number)
            if not permanent and row["deleted"]:
                raise VersionSoftDeleted(subject, number)
            change = "DELETE FROM registry_versions" if permanent else _SOFT_DELETE
            await conn.execute(f"{change} WHERE subject = $1 AND version = $2", subject, number)
        return number

    async def check_compatibility(
        self, subject: str, schema: str, version: Version
    ) -> CompatibilityResult:
        """Could `schema` follow that version at the subject's level?

        Nothing to compare with ("latest" of an empty subject) means compatible,
        as in Confluent 7+.
        """
        parsed = parse(schema)
        async with self._pool.acquire() as conn:
            level = await _level(conn, subject)
            try:
                row = await _version_row(conn, subject, version, Visibility.LIVE)
            except SubjectNotFound:
                if version == "latest":
                    return CompatibilityResult()
                raise
        return check(parsed, {row["version"]: parse(row["schema"])}, level)

    async def global_compatibility(self) -> Compatibility:
        return Compatibility(await self._pool.fetchval("SELECT compatibility FROM registry_config"))

    async def set_global_compatibility(self, level: Compatibility) -> None:
        await self._pool.execute("UPDATE registry_config SET compatibility = $1", level.value)

    async def subject_compatibility(self, subject: str) -> Compatibility:
        """The subject's own level; unset raises `SubjectCompatibilityNotSet`."""
        level = await self._pool.fetchval(
            "SELECT compatibility FROM registry_subjects WHERE subject = $1", subject
        )
        if level is None:
            raise SubjectCompatibilityNotSet(subject)
        return Compatibility(level)

    async def set_subject_compatibility(self, subject: str, level: Compatibility) -> None:
        await self._pool.execute(
            "INSERT INTO registry_subjects (subject, compatibility) VALUES ($1, $2)"
            " ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
            subject,
            level.value,
        )

    async def delete_subject_compatibility(self, subject: str) -> Compatibility:
        """Drop the subject's own level (the global one applies again); return what it was."""
        level = await self._pool.fetchval(
            "WITH old AS (SELECT subject, compatibility FROM registry_subjects"
            " WHERE subject = $1 FOR UPDATE)"
            " UPDATE registry_subjects s SET compatibility = NULL FROM old"
            " WHERE s.subject = old.subject RETURNING old.compatibility",
            subject,
        )
        if level is None:
            raise SubjectCompatibilityNotSet(subject)
        return Compatibility(level)


def _registered(row: asyncpg.Record) -> RegisteredSchema:
    return RegisteredSchema(row["subject"], row["version"], row["schema_id"], row["schema"])


async def _schema_id(conn: asyncpg.pool.PoolConnectionProxy, text: str) -> int:
    """The global id of this schema text, allocated on first use.

    A concurrent first use of the same text in another subject makes the insert
    wait for that transaction and then do nothing; the final select, a new
    statement, sees the winner's row.
    """
    key = _fingerprint(text)
    find = "SELECT id FROM registry_schemas WHERE fingerprint = $1"
    schema_id: int | None = await conn.fetchval(find, key)
    if schema_id is None:
        schema_id = await conn.fetchval(
            "INSERT INTO registry_schemas (schema, fingerprint) VALUES ($1, $2)"
            " ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
            text,
            key,
        )
    if schema_id is None:
        schema_id = await conn.fetchval(find, key)
    assert schema_id is not None
    return schema_id


async def _version_row(
    conn: asyncpg.pool.PoolConnectionProxy, subject: str, version: Version, visibility: Visibility
) -> asyncpg.Record:
    number = None if version == "latest" else version
    row = await conn.fetchrow(
        _VERSIONS + " AND ($4::integer IS NULL OR v.version = $4) ORDER BY v.version DESC LIMIT 1",
        subject,
        *visibility.value,
        number,
    )
    if row is None:
        await _require_subject(conn, subject, visibility)
        raise VersionNotFound(version)
    return row


async def _require_subject(
    conn: asyncpg.pool.PoolConnectionProxy, subject: str, visibility: Visibility
) -> None:
    """Raise `SubjectNotFound` unless the subject has a version in `visibility`."""
    if not await conn.fetchval(f"SELECT EXISTS ({_VERSIONS})", subject, *visibility.value):
        raise SubjectNotFound(subject)


async def _level(conn: asyncpg.pool.PoolConnectionProxy, subject: str) -> Compatibility:
    """The subject's own level, else the global one."""
    level = await conn.fetchval(
        "SELECT COALESCE((SELECT compatibility FROM registry_subjects WHERE subject = $1),"
        " (SELECT compatibility FROM registry_config))",
        subject,
    )
    return Compatibility(level)


async def _lock_existing_subject(conn: asyncpg.pool.PoolConnectionProxy, subject: str) -> None:
    if not await conn.fetchval(
        "SELECT true FROM registry_subjects WHERE subject = $1 FOR UPDATE", subject
    ):
        raise SubjectNotFound(subject)
