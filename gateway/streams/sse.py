"""``GET /v1/streams``: the caller's tenant's events as Server-Sent Events.

Each event is one ``id:`` + ``data:`` message (see `frames`); a quiet stream
gets a ``: heartbeat`` comment every ``stream_heartbeat_seconds``. A
subscriber that falls ``stream_buffer_events`` behind gets a final
``event: error`` naming the reason, and its connection is closed (cut after a
grace period if it does not even read that: a stalled reader holds nothing).
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.auth.dependencies import require
from gateway.auth.principal import Principal
from gateway.auth.rbac import Permission
from gateway.problems import problem_responses
from gateway.services import Services
from gateway.streams.params import resume_from, stream_filter
from gateway.streams.race import until_first
from gateway.streams.session import StreamSession
from gateway.streams.subscription import StreamDropped

Reader = Annotated[Principal, Depends(require(Permission.EVENTS_READ))]

HEARTBEAT = b": heartbeat\n\n"

TYPES_HELP = "Event type globs (`agent.*`), repeated or comma-separated; none = every type"
RESUME_HELP = (
    "Catch up from this archive position (inclusive), then go live; "
    "`Last-Event-ID` takes precedence"
)
LAST_EVENT_HELP = (
    "The `id` of the last event received: resume right after it, from the archive if need be"
)


class EventStreamResponse(Response):
    """Streams a `StreamSession` until the client leaves or is dropped."""

    media_type = "text/event-stream"

    def __init__(self, session: StreamSession) -> None:
        self.session = session
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await until_first(
                self._pump(send), _disconnect(receive), self.session.subscription.stuck_after_drop()
            )
        finally:
            self.session.close()

    async def _pump(self, send: Send) -> None:
        try:
            async for frames in self.session.batches():
                body = b"".join(frame.sse() for frame in frames) if frames else HEARTBEAT
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except StreamDropped as exc:
            last = f"event: error\ndata: {json.dumps({'reason': exc.reason})}\n\n".encode()
            await send({"type": "http.response.body", "body": last, "more_body": False})
        # Ended by stuck_after_drop instead, the response is unfinished: the server
        # closes the connection (and logs that it did).


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def sse_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["streams"], responses=problem_responses(401, 403, 429))

    @router.get(
        "/streams",
        status_code=200,
        response_class=EventStreamResponse,
        responses={
            200: {
                "description": "`text/event-stream`: `id:` + `data:` (the event as JSON) "
                "per event, `: heartbeat` comments, a final `event: error` when dropped",
                "content": {"text/event-stream": {}},
            },
            **problem_responses(404, 422),
        },
    )
    async def stream_events(
        principal: Reader,
        services: Services,
        types: Annotated[list[str] | None, Query(description=TYPES_HELP)] = None,
        subject: Annotated[str | None, Query(description="Only events about this subject")] = None,
        from_position: Annotated[int | None, Query(ge=1, description=RESUME_HELP)] = None,
        last_event_id: Annotated[
            str | None, Header(alias="Last-Event-ID", description=LAST_EVENT_HELP)
        ] = None,
    ) -> EventStreamResponse:
        """The tenant's events, live; resumable without gaps or duplicates."""
        session = await StreamSession.open(
            services,
            principal.tenant_id,
            stream_filter(services.catalog, types or [], subject),
            resume_from(last_event_id, from_position, "header.Last-Event-ID"),
            "sse",
        )
        return EventStreamResponse(session)

    return router
