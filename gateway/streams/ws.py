"""``GET /v1/ws``: the same stream as ``/v1/streams``, over a WebSocket.

Everything is checked before the handshake is accepted, and a refusal is the
same HTTP problem response the SSE endpoint gives (401, 403, 404, 422, 429):
credentials come from ``Authorization: Bearer`` or, for browsers, which cannot
set headers on a WebSocket, the ``access_token`` query parameter.

Once open, each text message is one event's JSON (with ``position`` when it
comes from the archive). To resume, reconnect with ``last_event_id`` = the last
event's ``position`` if it has one, else its ``id`` (what SSE sends as
``Last-Event-ID``), or with ``from_position``.
A quiet stream gets ``{"heartbeat": "<time>"}``. A subscriber that falls too
far behind is closed with code 1013 (try again later) and the reason.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from gateway.auth.dependencies import admit, bearer_token, principal_for
from gateway.auth.rbac import Permission
from gateway.problems import Problem, problem_response
from gateway.services import GatewayServices
from gateway.streams.params import invalid, resume_from, stream_filter
from gateway.streams.race import until_first
from gateway.streams.session import StreamSession
from gateway.streams.subscription import StreamDropped

#: Close code for a subscriber dropped for falling behind (RFC 6455: try again later).
TOO_SLOW = 1013


async def _open(websocket: WebSocket, services: GatewayServices) -> StreamSession:
    params = websocket.query_params
    authorization = websocket.headers.get("authorization")
    token = params.get("access_token")
    if authorization is not None or token is None:
        token = bearer_token(authorization)
    principal = await principal_for(services, token)
    await admit(services, principal, Permission.EVENTS_READ)
    chosen = stream_filter(services.catalog, params.getlist("types"), params.get("subject"))
    from_position = params.get("from_position")
    if from_position is not None and not (
        from_position.isascii() and from_position.isdigit() and int(from_position) >= 1
    ):
        raise invalid("query.from_position", "must be a whole number >= 1")
    last_event = params.get("last_event_id")
    if last_event is not None and from_position is not None:
        raise invalid("query.last_event_id", "give last_event_id or from_position, not both")
    resume = resume_from(
        last_event,
        None if from_position is None else int(from_position),
        "query.last_event_id",
    )
    return await StreamSession.open(services, principal.tenant_id, chosen, resume, "ws")


async def _pump(websocket: WebSocket, session: StreamSession) -> None:
    try:
        async for frames in session.batches():
            if not frames:
                heartbeat = {"heartbeat": datetime.now(UTC).isoformat()}
                await websocket.send_text(json.dumps(heartbeat))
            for frame in frames:
                await websocket.send_text(frame.data)
    except StreamDropped as exc:
        await websocket.close(TOO_SLOW, exc.reason)


async def _disconnect(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


def ws_router() -> APIRouter:
    router = APIRouter()

    @router.websocket("/v1/ws")
    async def stream_socket(websocket: WebSocket) -> None:
        """The tenant's events over a WebSocket (permission events:read)."""
        services: GatewayServices = websocket.app.state.services
        try:
            session = await _open(websocket, services)
        except Problem as problem:
            refusal = problem_response(
                problem.status,
                problem.detail,
                title=problem.title,
                instance=websocket.url.path,
                headers=problem.headers,
                **problem.extra,
            )
            await websocket.send_denial_response(refusal)
            return
        try:
            await websocket.accept()
            with contextlib.suppress(WebSocketDisconnect, OSError):
                await until_first(
                    _pump(websocket, session),
                    _disconnect(websocket),
                    session.subscription.stuck_after_drop(),
                )
        finally:
            session.close()

    return router
