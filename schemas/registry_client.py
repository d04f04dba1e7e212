"""ledgerbus's client for any Confluent-compatible schema registry.

The same code talks to the registry the gateway serves in dev (`.../registry`)
and to Confluent Schema Registry, Karapace or Apicurio in production
(`LEDGERBUS_SCHEMA_REGISTRY_URL`): it uses only Confluent's core REST paths,
relative to the base URL, so a base URL with a path prefix works.

Built on httpx rather than python-schema-registry-client's
`AsyncSchemaRegistryClient`, which does not fit: its `test_compatibility` turns
any 404 or 422 into `False`, so "the subject has no versions yet" (a 404 from
some registries) reads as "incompatible"; `get_by_id` returns `None` instead of
raising for an unknown id; `get_compatibility()` for the global level requests
`config/` with a trailing slash, which the gateway answers with a redirect that
client does not follow; it opens a new connection per request; and it puts
subject names into URLs unescaped.

Thin on purpose: no caching (schema ids never change meaning, so callers such as
`schemas.serde` cache what they need) and no retries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from schemas.compatibility import CompatibilityResult

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPT = f"{MEDIA_TYPE}, application/vnd.schemaregistry+json, application/json"


class RegistryClientError(Exception):
    """The registry refused a request; `error_code` is Confluent's (e.g. 409, 42201)."""

    def __init__(self, status_code: int, error_code: int | None, message: str) -> None:
        super().__init__(f"schema registry: {message} (HTTP {status_code}, code {error_code})")
        self.status_code = status_code
        self.error_code = error_code
        self.message = message


class RegistryNotFound(RegistryClientError, LookupError):
    """No such subject, version or schema id (HTTP 404)."""


class RegistryClient:
    """register, get by id, check compatibility, list subjects: what ledgerbus needs."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, headers={"Accept": ACCEPT})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """The schema's global id, registering it under `subject` if it is new there."""
        body = await self._request("POST", f"subjects/{_path(subject)}/versions", schema)
        return int(body["id"])

    async def get_schema(self, schema_id: int) -> dict[str, Any]:
        """The schema with this id; `RegistryNotFound` (a `LookupError`) if there is none."""
        body = await self._request("GET", f"schemas/ids/{schema_id}")
        schema: dict[str, Any] = json.loads(body["schema"])
        return schema

    async def check_compatibility(
        self, subject: str, schema: Mapping[str, Any], *, version: int | str = "latest"
    ) -> CompatibilityResult:
        """Could `schema` be registered after that version of the subject (default latest)?

        A subject with no versions accepts anything (the answer Confluent 7+
        gives; older registries answer 404, treated the same way here).
        """
        path = f"compatibility/subjects/{_path(subject)}/versions/{version}"
        try:
            body = await self._request("POST", path, schema, params={"verbose": "true"})
        except RegistryNotFound as exc:
            if exc.error_code == 40401:
                return CompatibilityResult()
            raise
        if body["is_compatible"]:
            return CompatibilityResult()
        messages = body.get("messages") or ["the registry gave no reason"]
        return CompatibilityResult(tuple(str(message) for message in messages))

    async def versions(self, subject: str) -> list[int]:
        """The subject's live version numbers; empty for an unknown subject."""
        try:
            body = await self._request("GET", f"subjects/{_path(subject)}/versions")
        except RegistryNotFound:
            return []
        return [int(version) for version in body]

    async def subjects(self) -> list[str]:
        body = await self._request("GET", "subjects")
        return [str(subject) for subject in body]

    async def _request(
        self,
        method: str,
        path: str,
        schema: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        content = None if schema is None else json.dumps({"schema": json.dumps(schema)})
        headers = {} if content is None else {"Content-Type": MEDIA_TYPE}
        response = await self._http.request(
            method, path, content=content, headers=headers, params=params
        )
        if response.is_success:
            return response.json()
        kind = RegistryNotFound if response.status_code == 404 else RegistryClientError
        raise kind(response.status_code, *_error(response))


def _error(response: httpx.Response) -> tuple[int | None, str]:
    """Confluent's error code and message, or whatever else the server said."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error_code" in body:
        return body["error_code"], str(body.get("message"))
    return None, response.text or response.reason_phrase


def _path(subject: str) -> str:
    """A subject as one path segment (subjects may hold `:`, spaces and the like)."""
    return quote(subject, safe="")
