"""Confluent Schema Registry's REST API: the part its clients and Avro serdes call.

confluent-kafka-python's `SchemaRegistryClient`, `AvroSerializer` and
`AvroDeserializer` (and other Confluent-compatible clients) work against this
unchanged, so any Kafka tool can decode ledgerbus events in dev with no
Confluent server. Paths are relative: the gateway mounts the router under a
prefix (`/registry`), and Confluent's client simply appends its paths to
whatever base URL it is given.

Wire details follow Confluent: `application/vnd.schemaregistry.v1+json` responses,
errors as `{"error_code": N, "message": ...}` whose HTTP status is the code's first
three digits, booleans in query strings in any case (the client sends `False`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, TypeVar

import asyncpg
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from event_store.schema_registry import (
    IncompatibleSchema,
    RegisteredSchema,
    RegistryError,
    SchemaNotFound,
    SchemaRegistryStore,
    SubjectCompatibilityNotSet,
    SubjectNotFound,
    SubjectNotSoftDeleted,
    SubjectSoftDeleted,
    Version,
    VersionNotFound,
    VersionNotSoftDeleted,
    VersionSoftDeleted,
    Visibility,
)
from schemas.compatibility import Compatibility, InvalidSchema

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
_REQUEST_TYPES = frozenset({MEDIA_TYPE, "application/vnd.schemaregistry+json", "application/json"})

#: Confluent's error code for each failure the store reports.
_ERROR_CODES: dict[type[Exception], int] = {
    SubjectNotFound: 40401,
    VersionNotFound: 40402,
    SchemaNotFound: 40403,
    SubjectSoftDeleted: 40404,
    SubjectNotSoftDeleted: 40405,
    VersionSoftDeleted: 40406,
    VersionNotSoftDeleted: 40407,
    SubjectCompatibilityNotSet: 40408,
    IncompatibleSchema: 409,
    InvalidSchema: 42201,
}
_INVALID_VERSION = 42202
_INVALID_COMPATIBILITY = 42203
_UNPROCESSABLE = 422
_UNSUPPORTED_MEDIA_TYPE = 415
_STORE_ERROR = 50001

_STORE_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class _RegistryResponse(JSONResponse):
    media_type = MEDIA_TYPE


class _BadRequest(Exception):
    """A request this API refuses before reaching the store."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


def _error_response(error_code: int, message: str) -> _RegistryResponse:
    status = error_code if error_code < 1000 else error_code // 100
    return _RegistryResponse({"error_code": error_code, "message": message}, status_code=status)


class _RegistryRoute(APIRoute):
    """Turns every failure into Confluent's error body.

    A router cannot install exception handlers (only the app can), and the app's
    would answer in FastAPI's `{"detail": ...}` shape, which Confluent's clients
    do not read.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_confluent_style(request: Request) -> Response:
            try:
                return await handle(request)
            except _BadRequest as exc:
                return _error_response(exc.error_code, str(exc))
            except (RegistryError, InvalidSchema) as exc:
                return _error_response(_ERROR_CODES[type(exc)], str(exc))
            except RequestValidationError as exc:
                return _error_response(_UNPROCESSABLE, _explain(exc.errors()))
            except _STORE_FAILURES:
                log.exception("schema registry store failed")
                return _error_response(_STORE_ERROR, "Error in the backend data store")

        return handle_confluent_style


class _SchemaRequest(BaseModel):
    """The body of register, lookup and compatibility requests."""

    model_config = ConfigDict(extra="ignore")

    schema_text: str = Field(alias="schema")
    schema_type: str = Field("AVRO", alias="schemaType")
    references: list[Any] = []
    metadata: Any = None
    rule_set: Any = Field(None, alias="ruleSet")

    def avro(self) -> str:
        """The schema text, if it is something this registry stores."""
        if self.schema_type.upper() != "AVRO":
            raise InvalidSchema(
                f"Unsupported schemaType {self.schema_type!r}: this registry stores AVRO only"
            )
        if self.references:
            raise InvalidSchema("Schema references are not supported by this registry")
        if self.metadata is not None or self.rule_set is not None:
            raise InvalidSchema("Schema metadata and rule sets are not supported by this registry")
        return self.schema_text


class _ConfigRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    compatibility: str | None = None
    compatibility_level: str | None = Field(None, alias="compatibilityLevel")

    def level(self) -> Compatibility:
        requested = self.compatibility or self.compatibility_level or ""
        try:
            return Compatibility(requested.upper())
        except ValueError:
            raise _BadRequest(
                _INVALID_COMPATIBILITY,
                "Invalid compatibility level. Valid values are none, backward, forward, full,"
                " backward_transitive, forward_transitive, and full_transitive",
            ) from None


Body = TypeVar("Body", bound=BaseModel)


async def _read_body(request: Request, model: type[Body]) -> Body:
    """Parse a JSON body ourselves so that bad ones get Confluent's error shape."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type and content_type not in _REQUEST_TYPES:
        raise _BadRequest(
            _UNSUPPORTED_MEDIA_TYPE,
            f"Unsupported content type {content_type!r}; send {MEDIA_TYPE} or application/json",
        )
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _BadRequest(_UNPROCESSABLE, _explain(exc.errors())) from None


def _parse_version(text: str) -> Version:
    """A path's version: a positive number, "latest", or -1 (Confluent's alias for latest)."""
    if text.strip().lower() in ("latest", "-1"):
        return "latest"
    if text.isdigit() and 1 <= int(text) < 2**31:
        return int(text)
    raise _BadRequest(
        _INVALID_VERSION,
        f"The specified version '{text}' is not a valid version id. "
        'Allowed values are between [1, 2^31-1] and the string "latest"',
    )


def _visibility(deleted: bool, deleted_only: bool = False) -> Visibility:
    if deleted_only:
        return Visibility.DELETED_ONLY
    return Visibility.WITH_DELETED if deleted else Visibility.LIVE


T = TypeVar("T")
Offset = Annotated[int, Query(ge=0)]


def _page(items: Sequence[T], offset: int, limit: int) -> list[T]:
    """Confluent's pagination: `limit` < 0 means no limit."""
    return list(items[offset : offset + limit if limit >= 0 else None])


def _registered_body(registered: RegisteredSchema) -> dict[str, Any]:
    return {
        "subject": registered.subject,
        "version": registered.version,
        "id": registered.schema_id,
        "schema": registered.schema,
    }


def _explain(errors: Sequence[Any]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts) or "Unprocessable entity"


def registry_router(store: SchemaRegistryStore) -> APIRouter:
    """The registry API on `store`, for the app to mount under a prefix."""
    router = APIRouter(
        tags=["schema registry"],
        route_class=_RegistryRoute,
        default_response_class=_RegistryResponse,
    )

    @router.post("/subjects/{subject}/versions")
    async def register(subject: str, request: Request) -> dict[str, Any]:
        """Register a schema under a subject (or get its existing id); `normalize` is implied."""
        body = await _read_body(request, _SchemaRequest)
        registered = await store.register(subject, body.avro())
        return {"id": registered.schema_id, "version": registered.version}

    @router.post("/subjects/{subject}")
    async def lookup(subject: str, request: Request, deleted: bool = False) -> dict[str, Any]:
        """Which version of the subject is this schema?"""
        body = await _read_body(request, _SchemaRequest)
        return _registered_body(await store.lookup(subject, body.avro(), _visibility(deleted)))

    @router.get("/schemas/ids/{schema_id}")
    async def schema_by_id(schema_id: int) -> dict[str, Any]:
        """A schema by global id (what deserializers ask); `subject`/`format` are ignored."""
        return {"schema": await store.schema(schema_id)}

    @router.get("/schemas/ids/{schema_id}/versions")
    async def schema_versions(
        schema_id: int,
        subject: str | None = None,
        deleted: bool = False,
        offset: Offset = 0,
        limit: int = -1,
    ) -> list[dict[str, Any]]:
        pairs = await store.schema_versions(schema_id, _visibility(deleted))
        matching = [
            {"subject": name, "version": version}
            for name, version in pairs
            if subject is None or name == subject
        ]
        return _page(matching, offset, limit)

    @router.get("/subjects")
    async def subjects(
        prefix: Annotated[str, Query(alias="subjectPrefix")] = "",
        deleted: bool = False,
        deleted_only: bool = False,
        offset: Offset = 0,
        limit: int = -1,
    ) -> list[str]:
        found = await store.subjects(_visibility(deleted, deleted_only), prefix)
        return _page(found, offset, limit)

    @router.get("/subjects/{subject}/versions")
    async def versions(
        subject: str,
        deleted: bool = False,
        deleted_only: bool = False,
        offset: Offset = 0,
        limit: int = -1,
    ) -> list[int]:
        found = await store.versions(subject, _visibility(deleted, deleted_only))
        return _page(found, offset, limit)

    @router.get("/subjects/{subject}/versions/{version}")
    async def version(subject: str, version: str, deleted: bool = False) -> dict[str, Any]:
        found = await store.version(subject, _parse_version(version), _visibility(deleted))
        return _registered_body(found)

    @router.delete("/subjects/{subject}")
    async def delete_subject(subject: str, permanent: bool = False) -> list[int]:
        """Soft-delete a subject; `permanent=true` afterwards removes it for good."""
        return await store.delete_subject(subject, permanent=permanent)

    @router.delete("/subjects/{subject}/versions/{version}")
    async def delete_version(subject: str, version: str, permanent: bool = False) -> int:
        return await store.delete_version(subject, _parse_version(version), permanent=permanent)

    @router.get("/config")
    async def global_config() -> dict[str, str]:
        return {"compatibilityLevel": await store.global_compatibility()}

    @router.put("/config")
    async def set_global_config(request: Request) -> dict[str, str]:
        level = (await _read_body(request, _ConfigRequest)).level()
        await store.set_global_compatibility(level)
        return {"compatibility": level}

    @router.get("/config/{subject}")
    async def subject_config(
        subject: str, default_to_global: Annotated[bool, Query(alias="defaultToGlobal")] = False
    ) -> dict[str, str]:
        """The subject's own level; without `defaultToGlobal=true`, 40408 when it has none."""
        try:
            level = await store.subject_compatibility(subject)
        except SubjectCompatibilityNotSet:
            if not default_to_global:
                raise
            level = await store.global_compatibility()
        return {"compatibilityLevel": level}

    @router.put("/config/{subject}")
    async def set_subject_config(subject: str, request: Request) -> dict[str, str]:
        level = (await _read_body(request, _ConfigRequest)).level()
        await store.set_subject_compatibility(subject, level)
        return {"compatibility": level}

    @router.delete("/config/{subject}")
    async def delete_subject_config(subject: str) -> dict[str, str]:
        """Drop the subject's own level; the global one applies again."""
        return {"compatibilityLevel": await store.delete_subject_compatibility(subject)}

    @router.post("/compatibility/subjects/{subject}/versions/{version}")
    async def check_compatibility(
        subject: str, version: str, request: Request, verbose: bool = False
    ) -> dict[str, Any]:
        """Could this schema follow that version, at the subject's level?"""
        body = await _read_body(request, _SchemaRequest)
        result = await store.check_compatibility(subject, body.avro(), _parse_version(version))
        answer: dict[str, Any] = {"is_compatible": result.compatible}
        if verbose:
            answer["messages"] = list(result.messages)
        return answer

    return router
