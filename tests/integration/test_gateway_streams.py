"""``GET /v1/streams`` (SSE) and ``GET /v1/ws`` over real HTTP, on real Kafka and PostgreSQL.

Events are published to Kafka as producers do; the gateway's one hub consumer
fans them out. Where a stream catches up from the archive, either the real
``ledgerbus archiver`` runs, or events are archived the way it archives them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import uuid
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AsyncExitStack, closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from websockets.asyncio.client import ClientConnection
from websockets.frames import Close

from event_store.store import EventStore
from producers.publisher import Publisher, build_event
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.topics import physical_name
from tests.conftest import Isolation
from tests.support.archive import archiver_process, eventually
from tests.support.archived import archive
from tests.support.gateway import RunningGateway
from tests.support.streams import (
    SseMessage,
    SseReader,
    another_gateway,
    events,
    ids,
    resume_after,
    sse,
)


def in_order(items: Sequence[Envelope[Any]]) -> dict[tuple[str, str], list[str]]:
    """Event ids per (type, subject): the order Kafka keeps (key = subject, within a topic)."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for event in items:
        grouped[event.type, event.subject].append(str(event.id))
    return dict(grouped)


def received_in_order(messages: Sequence[SseMessage]) -> dict[tuple[str, str], list[str]]:
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for message in messages:
        event = message.json()
        grouped[event["type"], event["subject"]].append(event["id"])
    return dict(grouped)


async def test_live_events_reach_subscribers_filtered_and_only_their_tenants(
    gateway: RunningGateway, isolation: Isolation, publisher: Publisher
) -> None:
    tenant, other = isolation.tenant_id, f"other-{uuid.uuid4().hex[:8]}"
    subjects = ("run-0", "run-1", "run-2")
    mine = events(tenant, 24, subjects=subjects)
    theirs = events(other, 12, subjects=subjects)
    wanted = [e for e in mine if e.type.startswith("agent.") and e.subject == "run-1"]
    assert wanted
    async with (
        gateway.client(await gateway.key(tenant, "viewer")) as reader,
        gateway.client(await gateway.key(other, "developer")) as other_reader,
        sse(reader, {"types": "agent.*", "subject": "run-1"}) as filtered,
        sse(reader) as everything,
        sse(other_reader) as other_stream,
    ):
        await publisher.publish_many([*mine, *theirs])
        got = await filtered.events(len(wanted))
        assert ids(got) == [str(e.id) for e in wanted]
        assert got[0].id == str(wanted[0].id)  # live events: the SSE id is the event id
        assert got[0].json() == json.loads(wanted[0].model_dump_json())  # as `ledgerbus tail`

        all_mine = await everything.events(len(mine))
        assert received_in_order(all_mine) == in_order(mine)  # each once, in order

        # The hub fans out in order: once the marker (published after everything) arrives,
        # any event of `tenant` that had been queued for `other` would have arrived before it.
        marker = events(other, 1, subjects=("marker",))
        await publisher.publish_many(marker)
        got_other = await other_stream.events(len(theirs) + 1)
        assert received_in_order(got_other) == in_order([*theirs, *marker])
        assert all(message.json()["tenant_id"] == other for message in got_other)


async def marker_comes_next(stream: SseReader, publisher: Publisher, tenant: str) -> None:
    """Nothing else is queued for ``stream``: an event published now is the next one."""
    marker = events(tenant, 1, subjects=("marker",))
    await publisher.publish_many(marker)
    assert ids(await stream.events(1)) == [str(marker[0].id)]


async def test_resume_with_last_event_id_from_the_hubs_recent_events(
    gateway: RunningGateway, isolation: Isolation, publisher: Publisher
) -> None:
    tenant = isolation.tenant_id
    subjects = ("run-0", "run-1", "run-2")
    first = events(tenant, 10, subjects=subjects)
    more = events(tenant, 6, subjects=subjects, start=10)
    later = events(tenant, 3, subjects=subjects, start=16)
    async with gateway.client(await gateway.key(tenant, "viewer")) as client:
        async with sse(client) as stream:
            await publisher.publish_many(first)
            seen = await stream.events(4)
        await publisher.publish_many(more)  # while disconnected
        async with resume_after(client, seen[-1]) as stream:
            rest = await stream.events(12)
            await publisher.publish_many(later)
            rest += await stream.events(3)
            await marker_comes_next(stream, publisher, tenant)
    received = [*seen, *rest]
    published = [*first, *more, *later]
    assert sorted(ids(received)) == sorted(str(event.id) for event in published)  # each once
    assert received_in_order(received) == in_order(published)


async def nothing_pending(stream: SseReader) -> None:
    """A heartbeat comes only once catch-up and live queue are empty: nothing else was due."""
    assert (await stream.message()).heartbeat


async def test_resume_in_another_gateway_catches_up_from_the_archive(
    gateway: RunningGateway,
    isolation: Isolation,
    publisher: Publisher,
    event_store: EventStore,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The ring of a fresh gateway does not hold the last event seen: the archive does.

    One type and subject, so one partition: the archive's order is the stream's order.
    """
    tenant = isolation.tenant_id
    published = events(tenant, 21, types=("agent.heartbeat",))

    async def archived(count: int) -> None:
        async def enough() -> bool:
            return (await event_store.head(tenant)).position >= count

        await eventually(enough, timeout=60)

    env = {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}
    # no audit.checkpoint event of its own during the test
    archiver = archiver_process(env, tmp_path / "archiver.log", "--checkpoint-seconds", "3600")
    try:
        token = await gateway.key(tenant, "viewer")
        async with gateway.client(token) as client, sse(client) as stream:
            await publisher.publish_many(published[:10])
            seen = await stream.events(4)
        await publisher.publish_many(published[10:16])
        await archived(16)
        async with (
            another_gateway(gateway, stream_heartbeat_seconds=0.3) as restarted,
            restarted.client(token) as client,
        ):
            await publisher.publish_many(published[16:19])  # in the new gateway's ring...
            await archived(19)  # ...and in the archive
            async with resume_after(client, seen[-1]) as stream:  # an event id the ring lacks
                caught_up = await stream.events(6)
            assert [message.id for message in caught_up] == [str(n) for n in range(5, 11)]
            assert [message.json()["position"] for message in caught_up] == list(range(5, 11))
            async with resume_after(client, caught_up[-1]) as stream:  # a position
                rest = await stream.events(9)
                await nothing_pending(stream)  # 17-19 were in the ring too: sent once
            async with resume_after(client, rest[-3]) as stream:  # position 17: ring had it
                again = await stream.events(2)
                await nothing_pending(stream)
                await publisher.publish_many(published[19:])
                again += await stream.events(2)
                await nothing_pending(stream)
    finally:
        archiver.send_signal(signal.SIGTERM)
        assert archiver.wait(timeout=30) == 0, (tmp_path / "archiver.log").read_text()
    assert ids([*seen, *caught_up, *rest]) == [str(event.id) for event in published[:19]]
    assert ids(again) == [str(event.id) for event in published[17:]]


def ws_url(gateway: RunningGateway, **params: Any) -> str:
    return f"ws{gateway.url.removeprefix('http')}/v1/ws?{httpx.QueryParams(params)}"


async def test_websocket_catches_up_from_position_then_goes_live(
    gateway: RunningGateway,
    isolation: Isolation,
    publisher: Publisher,
    event_store: EventStore,
) -> None:
    tenant, other = isolation.tenant_id, f"other-{uuid.uuid4().hex[:8]}"
    history = events(tenant, 8, types=("agent.heartbeat",))
    await archive(event_store, publisher.serializer, history)
    await archive(event_store, publisher.serializer, events(other, 3, types=("agent.heartbeat",)))
    live = events(tenant, 5, types=("agent.heartbeat",), start=8)
    token = await gateway.key(tenant, "viewer")
    async with websockets.connect(ws_url(gateway, from_position=3, access_token=token)) as ws:
        caught_up = [json.loads(await ws.recv()) for _ in range(6)]
        await publisher.publish_many(live[:3])
        went_live = [json.loads(await ws.recv()) for _ in range(3)]
    assert [event["position"] for event in caught_up] == list(range(3, 9))
    assert [event["id"] for event in caught_up] == [str(event.id) for event in history[2:]]
    assert all(event["tenant_id"] == tenant for event in caught_up)
    assert [event["id"] for event in went_live] == [str(event.id) for event in live[:3]]
    assert "position" not in went_live[0]

    await publisher.publish_many(live[3:])  # while disconnected
    url = ws_url(gateway, last_event_id=went_live[-1]["id"], types="agent.*")
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        resumed = [json.loads(await ws.recv()) for _ in range(2)]
    assert [event["id"] for event in resumed] == [str(event.id) for event in live[3:]]


async def test_two_hundred_subscribers_each_get_their_filtered_events(
    gateway: RunningGateway, isolation: Isolation, publisher: Publisher
) -> None:
    tenant = isolation.tenant_id
    subjects = [f"run-{n}" for n in range(10)]
    published = events(tenant, 80, subjects=subjects)
    filters = [
        {"subject": subjects[n % 10], **({"types": "agent.*,workflow.*"} if n % 2 else {})}
        for n in range(200)
    ]
    token = await gateway.key(tenant, "viewer")
    limits = httpx.Limits(max_connections=None)
    async with gateway.client(token, limits=limits) as client, AsyncExitStack() as streams:
        readers = [await streams.enter_async_context(sse(client, wanted)) for wanted in filters]
        await publisher.publish_many(published)

        async def check(reader: SseReader, wanted: dict[str, str]) -> None:
            expected = [
                event
                for event in published
                if event.subject == wanted["subject"]
                and ("types" not in wanted or event.type.split(".")[0] in ("agent", "workflow"))
            ]
            assert expected
            got = await reader.events(len(expected), timeout=60)
            assert received_in_order(got) == in_order(expected)

        await asyncio.gather(*(check(r, f) for r, f in zip(readers, filters, strict=True)))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def small_socket(gateway: RunningGateway) -> socket.socket:
    """Connected to the gateway, with a tiny receive buffer: stalls as soon as unread."""
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


async def stalled_reader(gateway: RunningGateway, token: str) -> socket.socket:
    """An SSE request on a `small_socket`, which the test reads only later."""
    sock = await small_socket(gateway)
    request = (
        f"GET /v1/streams HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    )
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    return sock


async def read_to_end(sock: socket.socket, timeout: float = 30.0) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, 1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


async def close_frame(connection: ClientConnection) -> Close | None:
    """Reads a WebSocket to its end: the close frame the server sent, if any."""
    try:
        async with asyncio.timeout(30):
            while True:
                await connection.recv()
    except websockets.ConnectionClosed as closed:
        return closed.rcvd


def subscribers(protocol: str) -> float:
    return sample("ledgerbus_gateway_stream_subscribers", protocol=protocol)


def drops(protocol: str) -> float:
    return sample("ledgerbus_gateway_stream_dropped_total", protocol=protocol)


async def test_stalled_subscribers_are_dropped_without_delaying_the_others(
    gateway: RunningGateway, isolation: Isolation, publisher: Publisher
) -> None:
    tenant = isolation.tenant_id
    before = {protocol: (subscribers(protocol), drops(protocol)) for protocol in ("sse", "ws")}
    buffer = gateway.services.settings.stream_buffer_events
    reason = f"too slow: more than {buffer} events waiting"
    token = await gateway.key(tenant, "viewer")
    with (
        closing(await stalled_reader(gateway, token)) as late_reader,
        closing(await stalled_reader(gateway, token)) as never_reader,
    ):
        late_socket = await websockets.connect(  # uncompressed, so as many bytes as SSE
            ws_url(gateway, access_token=token),
            sock=await small_socket(gateway),
            max_queue=1,
            compression=None,
        )
        async with late_socket, gateway.client(token) as client, sse(client) as healthy:
            await eventually(
                lambda: (
                    (subscribers("sse"), subscribers("ws"))
                    == (before["sse"][0] + 3, before["ws"][0] + 1)
                )
            )
            # the late readers start reading as soon as they are dropped, within the
            # grace period: they get what was written, the reason, then the end
            sse_read: asyncio.Task[bytes] | None = None
            ws_closed: asyncio.Task[Close | None] | None = None
            slowest = 0.0
            size = buffer // 2  # a burst fits a buffer: a subscriber that keeps up stays
            for burst in range(60):  # the server's socket buffers take a few MB first
                published = events(tenant, size, start=burst * size)
                began = asyncio.get_running_loop().time()
                await publisher.publish_many(published)
                got = await healthy.events(len(published))
                slowest = max(slowest, asyncio.get_running_loop().time() - began)
                assert sorted(ids(got)) == sorted(str(event.id) for event in published)
                if sse_read is None and drops("sse") == before["sse"][1] + 2:
                    sse_read = asyncio.create_task(read_to_end(late_reader))
                if ws_closed is None and drops("ws") == before["ws"][1] + 1:
                    ws_closed = asyncio.create_task(close_frame(late_socket))
                if sse_read and ws_closed:
                    break
            else:
                pytest.fail("the stalled subscribers were never dropped")
            assert slowest < 10, f"a burst took {slowest:.1f} s to reach the healthy one"

            written = await sse_read
            assert written.startswith(b"HTTP/1.1 200")
            _, last = written.rsplit(b"event: ", 1)
            assert last.startswith(b"error\ndata: {"), written[-300:]
            data, end = last.removeprefix(b"error\ndata: ").split(b"\n", 1)
            assert json.loads(data) == {"reason": reason}
            assert end == b"\n\r\n0\r\n\r\n"  # the last event, then the last chunk
            close = await ws_closed
            assert close is not None
            assert (close.code, close.reason) == (1013, reason)

            # the one that never reads is cut after the grace period: nothing held for it
            await eventually(lambda: subscribers("sse") == before["sse"][0] + 1)
            assert (await read_to_end(never_reader)).startswith(b"HTTP/1.1 200")
            await marker_comes_next(healthy, publisher, tenant)


BAD_FILTERS = [
    ({"types": "agent.[st]*"}, "query.types"),
    ({"types": ""}, "query.types"),
    ({"types": "agent.*,"}, "query.types"),
    ({"types": "agnet.*"}, "query.types"),
    ({"subject": ""}, "query.subject"),
    ({"from_position": "0"}, "query.from_position"),
]


@pytest.mark.parametrize(("params", "path"), BAD_FILTERS)
async def test_bad_stream_parameters_are_refused_before_the_stream_opens(
    gateway: RunningGateway, isolation: Isolation, params: dict[str, str], path: str
) -> None:
    token = await gateway.key(isolation.tenant_id, "viewer")
    async with gateway.client(token) as client:
        response = await client.get("/v1/streams", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert path in [error["path"] for error in response.json()["errors"]]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(gateway, access_token=token, **params))
    assert refused.value.response.status_code == 422
    assert path in [error["path"] for error in json.loads(refused.value.response.body)["errors"]]


async def test_unknown_glob_names_close_matches(
    gateway: RunningGateway, isolation: Isolation
) -> None:
    async with gateway.client(await gateway.key(isolation.tenant_id, "viewer")) as client:
        response = await client.get("/v1/streams", params={"types": "agent.heartbeet"})
    assert response.status_code == 422
    assert "did you mean agent.heartbeat" in response.json()["detail"]


async def test_resume_points_that_name_no_event_of_the_tenant_are_refused(
    gateway: RunningGateway, isolation: Isolation, publisher: Publisher, event_store: EventStore
) -> None:
    other = f"other-{uuid.uuid4().hex[:8]}"
    theirs = events(other, 1)
    await archive(event_store, publisher.serializer, theirs)
    async with (
        another_gateway(gateway, stream_resume_wait_seconds=0.2) as quick,
        quick.client(await quick.key(isolation.tenant_id, "viewer")) as client,
    ):
        for last_event_id, status in [
            ("yesterday", 422),
            (str(uuid.uuid4()), 404),
            (str(theirs[0].id), 404),  # another tenant's event is not found, not forbidden
        ]:
            response = await client.get("/v1/streams", headers={"Last-Event-ID": last_event_id})
            assert response.status_code == status, response.text
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(
                ws_url(quick, last_event_id=str(theirs[0].id)),
                additional_headers=client.headers,
            )
        assert refused.value.response.status_code == 404


async def test_streams_need_a_credential_with_events_read(
    gateway: RunningGateway, isolation: Isolation
) -> None:
    auditor = await gateway.key(isolation.tenant_id, "viewer", scopes=["audit:read"])
    async with gateway.client() as anonymous:
        assert (await anonymous.get("/v1/streams")).status_code == 401
        bad = {"Authorization": "Bearer lb_nope_nope"}
        assert (await anonymous.get("/v1/streams", headers=bad)).status_code == 401
        forbidden = await anonymous.get(
            "/v1/streams", headers={"Authorization": f"Bearer {auditor}"}
        )
        assert forbidden.status_code == 403
        assert forbidden.json()["permission"] == "events:read"
    for url, headers, status in [
        (ws_url(gateway), {}, 401),
        (ws_url(gateway, access_token="lb_nope_nope"), {}, 401),
        (ws_url(gateway), {"Authorization": "Basic abc"}, 401),
        (ws_url(gateway, access_token=auditor), {}, 403),
    ]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, additional_headers=headers)
        assert refused.value.response.status_code == status


async def test_idle_streams_get_heartbeats(gateway: RunningGateway, isolation: Isolation) -> None:
    async with another_gateway(gateway, stream_heartbeat_seconds=0.2) as chatty:
        token = await chatty.key(isolation.tenant_id, "viewer")
        async with chatty.client(token) as client, sse(client) as stream:
            assert (await stream.message(timeout=10)).heartbeat
        async with websockets.connect(ws_url(chatty, access_token=token)) as ws:
            assert "heartbeat" in json.loads(await asyncio.wait_for(ws.recv(), 10))


async def test_the_hub_skips_records_it_cannot_decode(
    gateway: RunningGateway, isolation: Isolation, publisher: Publisher
) -> None:
    tenant = isolation.tenant_id
    skipped = sample("ledgerbus_gateway_stream_skipped_total", reason="not_confluent_framed")
    after = events(tenant, 1)
    producer = AIOKafkaProducer(bootstrap_servers=gateway.services.endpoints.kafka_bootstrap)
    async with gateway.client(await gateway.key(tenant, "viewer")) as client, sse(client) as stream:
        await producer.start()
        try:
            topic = physical_name("agents", isolation.topic_prefix)
            await producer.send_and_wait(topic, b"not an event", key=b"run-0")
        finally:
            await producer.stop()
        await publisher.publish_many(after)
        assert ids(await stream.events(1)) == [str(after[0].id)]
    assert sample("ledgerbus_gateway_stream_skipped_total", reason="not_confluent_framed") == (
        skipped + 1
    )


async def test_the_stream_is_documented(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        operation = (await client.get("/openapi.json")).json()["paths"]["/v1/streams"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"401", "403", "404", "422", "429"} <= operation["responses"].keys()
    parameters = {parameter["name"] for parameter in operation["parameters"]}
    assert {"types", "subject", "from_position", "Last-Event-ID"} <= parameters


async def test_webhook_secrets_are_never_streamed(
    gateway: RunningGateway, isolation: Isolation, publisher: Publisher
) -> None:
    tenant = isolation.tenant_id
    subscribed = build_event(
        default_catalog().get("webhook.subscribed"),
        subject="wh_secretive",
        tenant_id=tenant,
        data={
            "webhook_id": "wh_secretive",
            "url": "https://example.com/hook",
            "event_types": ["agent.*"],
            "secret": "whsec_" + "s" * 32,
            "ordered": False,
            "description": None,
        },
        source="test",
    )
    async with (
        gateway.client(await gateway.key(tenant, "viewer")) as reader,
        sse(reader, {"types": "webhook.*"}) as stream,
    ):
        await publisher.publish(subscribed)
        [message] = await stream.events(1)
    assert message.json()["data"]["secret"] == "[redacted]"
    assert "whsec_" not in (message.data or "")
