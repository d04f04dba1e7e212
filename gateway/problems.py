"""Errors as RFC 9457 problem details: one JSON shape for every failure.

Routes raise `Problem`; FastAPI's own validation errors, unknown routes and
unexpected exceptions are turned into the same shape, so a client needs one
error parser. `problem_responses` documents the shape in OpenAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"


class ProblemDetail(BaseModel):
    """RFC 9457 body; extension members (``errors``, ``permission``...) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class Problem(Exception):
    """An error a route answers with; ``extra`` becomes extension members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(
    status: int,
    detail: str | None,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=MEDIA_TYPE
    )


def validation_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Pydantic/FastAPI errors as ``{path, reason}`` pairs, e.g. ``body.data.amount``."""
    return [
        {"path": ".".join(str(part) for part in error["loc"]), "reason": error["msg"]}
        for error in errors
    ]


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(
            exc.status,
            exc.detail,
            title=exc.title,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(
            exc.status_code,
            str(exc.detail),
            instance=request.url.path,
            headers=exc.headers,
        )

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = validation_errors(exc.errors())
        summary = "; ".join(f"{error['path']}: {error['reason']}" for error in errors)
        return problem_response(
            422, summary or "invalid request", instance=request.url.path, errors=errors
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal error", instance=request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(Exception, on_unexpected)


_MEANING = {
    400: "Malformed request",
    401: "Missing, unknown, revoked or expired credential",
    403: "The credential's role lacks the permission named in the body",
    404: "Not found in the caller's tenant",
    409: "Conflict (e.g. Idempotency-Key reused with a different body)",
    413: "Body larger than the configured limit",
    422: "Invalid input; `errors` lists each field path and reason",
    429: "Rate limit exceeded; see Retry-After and RateLimit-* headers",
    503: "A dependency is unavailable",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these statuses, all problem details."""
    return {
        status: {
            "model": ProblemDetail,
            "description": _MEANING.get(status, HTTPStatus(status).phrase),
            "content": {MEDIA_TYPE: {}},
        }
        for status in statuses
    }
