"""Hostile frames against a real daphne: whatever a client sends, its session answers with a
documented error or close code, stores and echoes text safely, and leaves no traceback.

The hypothesis test throws arbitrary JSON values, depths and strings at every message type of
docs/protocol.md (and binary frames); `REGRESSIONS` keeps every frame that once broke a session,
`HOSTILE` the cases checked beside them. Each test has a web process of its own or shares one
with this module only, so that its log shows exactly what the frames caused.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chat.consumers import ChatConsumer
from chat.models import ChatSession, EndReason, Message
from echoproject.asgi import application  # sets logging up at import, before caplog
from tests.fixtures_realtime import ClientPeer
from tests.fixtures_sessions import daphne_with, run
from tests.procs import Proc

pytestmark = pytest.mark.usefixtures("live_avatars")

TYPES = [
    "ping",
    "text_message",
    "interrupt",
    "stop_session",
    "offer",
    "ice_candidate",
    "ready",
    "asr_start",
    "asr_stop",
]
FIELDS = [
    "id",
    "timestamp",
    "text",
    "sdp",
    "sdp_type",
    "candidates",
    "candidate",
    "sdpMid",
    "sdpMLineIndex",
    "direction",
    "language",
    "transport",
    "format",
    "sample_rate",
]
LONE_SURROGATE = "\ud800"
# The codes docs/protocol.md gives for a client's frame (a reply's provider errors aside).
FRAME_ERRORS = {
    "ERR_BAD_MESSAGE",
    "ERR_UNKNOWN_TYPE",
    "ERR_STATE",
    "ERR_TOO_LARGE",
    "ERR_AUDIO_INVALID",
    "ERR_WEBRTC_FAILED",
}
DEEP = "[" * 3000 + "]" * 3000  # well under 64 KiB

# Every frame that once ended a session with 1011 or logged a traceback (found from outside) ...
REGRESSIONS = [
    '{"type": "ping", "id": "\\ud800"}',
    '{"type": "ping", "timestamp": "\\ud800"}',
    '{"type": "text_message", "text": "hi \\ud800 there"}',
    '{"type": "text_message", "text": "\\udfff", "id": "\\udbff\\udbff"}',
    '{"type": "ping", "x": ' + DEEP + "}",
    '{"type": "text_message", "text": ' + '{"a": ' * 1500 + "1" + "}" * 1500 + "}",
    DEEP,
]
# ... and the hostile frames checked beside them, each of which a fix could have broken.
HOSTILE = [
    '{"type": "ping", "x": ' + "[" * 33 + "]" * 33 + "}",
    '{"type": "offer", "sdp": "v=0\\r\\nm=audio \\ud800"}',
    '{"type": "offer", "sdp": "v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\n"}',
    '{"type": "ice_candidate", "candidate": "\\ud800"}',
    '{"type": "offer", "sdp": "m=", "candidates": [{"candidate": "1 1 udp 1 1.2.3.4 99999999 typ host"}]}',
    '{"type": "offer", "sdp": "m=", "candidates": [{"candidate": "1 1 udp 1 not-an-ip 9 typ host"}]}',
    '{"type": "asr_start", "language": "\\ud800", "transport": "websocket"}',
    '{"type": "\\ud800"}',
    '{"\\ud800": 1, "type": "ping"}',
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from([LONE_SURROGATE, "a\udc00b", "\U0001f600", "\x00", "m=audio", "websocket"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
# Values a field accepts, so that hostile messages also pass validation and reach the states
# behind it (a recognition span, a negotiation, a reply).
plausible = st.sampled_from(
    [
        "websocket",
        "webrtc",
        "pcm16",
        16000,
        8000,
        48000,
        "both",
        "send",
        "en-US",
        "offer",
        "",
        "0",
        0,
        "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        "Hello there",
    ]
)
protocol_messages = st.builds(
    lambda kind, fields, extra: {"type": kind, **fields, **extra},
    st.sampled_from(TYPES),
    st.dictionaries(st.sampled_from(FIELDS), json_values | plausible, max_size=4),
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)


def _nested(depth: int) -> str:
    return '{"type": "ping", "timestamp": ' + "[" * depth + "]" * depth + "}"


def _raw(message: dict[str, Any]) -> str:
    """JSON with characters unescaped (a client's encoder), lone surrogates still escaped: as
    raw characters they are not UTF-8, and a client cannot send them in a text frame."""
    text = json.dumps(message, ensure_ascii=False)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)


text_frames = (
    protocol_messages.map(_raw)
    | protocol_messages.map(json.dumps)  # surrogates as \\u escapes, the way they reach daphne
    | st.integers(min_value=1, max_value=5000).map(_nested)
    | json_values.map(json.dumps)
    | st.text(max_size=100)
)
frames = st.one_of(text_frames, st.binary(max_size=2000))


def _legitimate_stop(sent: list[str | bytes]) -> bool:
    """Whether `sent` holds a valid stop_session, which ends the session (docs/protocol.md: a
    JSON object, `id` a string of at most 64 characters, nested at most 32 deep)."""
    for frame in sent:
        try:
            message = json.loads(frame) if isinstance(frame, str) else None
        except (ValueError, RecursionError):
            continue
        if (
            isinstance(message, dict)
            and message.get("type") == "stop_session"
            and (message.get("id") is None or isinstance(message["id"], str))
            and len(message.get("id") or "") <= 64
            and _depth(message) <= 32
        ):
            return True
    return False


def _depth(value: Any) -> int:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(child) for child in children), default=0)
    return 0


class Daphne:
    """The test's own web process, so its log holds only what these frames caused."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.url = f"ws://127.0.0.1:{port}/ws/chat/"
        self.port = port

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def hostile_server(django_db_setup: None, log_dir: Path) -> Iterator[Daphne]:
    proc, port = daphne_with(log_dir, "daphne-hostile", RATE_LIMIT_MESSAGES="1000")
    yield Daphne(proc, port)
    proc.stop()


async def _frames_then_ping(url: str, sent: list[str | bytes]) -> dict[str, Any]:
    """Send `sent` on a fresh session, then a ping; what came back and how the socket ended."""
    async with websockets.connect(url, max_size=None) as ws:
        init = json.loads(await ws.recv())
        assert init["type"] == "init"
        for frame in sent:
            await ws.send(frame)
        events: list[dict[str, Any]] = []
        try:
            await ws.send(json.dumps({"type": "ping", "id": "probe", "timestamp": 1}))
            for _ in range(500):  # replies to the frames come first; the pong is ours
                frame = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(frame, bytes):
                    continue
                event = json.loads(frame)
                events.append(event)
                if event["type"] == "pong" and event.get("ref") == "probe":
                    break
        except websockets.ConnectionClosed:
            pass
        return {"session_id": init["session_id"], "events": events, "close": ws.close_code}


def _check_session_survived(server: Daphne, sent: list[str | bytes], log_from: int) -> None:
    result = run(_frames_then_ping(server.url, sent), timeout=60)
    events = result["events"]
    assert result["close"] != 1011
    if _legitimate_stop(sent):  # the only frame that ends a session
        assert result["close"] == 1000
        assert [e["type"] for e in events][-1:] == ["session_ended"]
    else:
        assert result["close"] is None
        assert events and events[-1]["type"] == "pong" and events[-1]["timestamp"] == 1
    for event in events:
        if event["type"] == "error":
            assert event["code"] in FRAME_ERRORS, event
    new_log = server.log()[log_from:]
    assert "Traceback" not in new_log and "Task was destroyed" not in new_log, new_log[-3000:]


@pytest.mark.parametrize(
    "frame",
    REGRESSIONS + HOSTILE,
    ids=[f"regression{i}" for i in range(len(REGRESSIONS))]
    + [f"hostile{i}" for i in range(len(HOSTILE))],
)
def test_known_hostile_frame_is_answered_and_the_session_lives(
    hostile_server: Daphne, frame: str
) -> None:
    _check_session_survived(hostile_server, [frame], len(hostile_server.log()))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sent=st.lists(frames, min_size=1, max_size=3))
@example(sent=['{"type": "asr_start", "transport": "websocket"}', b"\x01\x02\x03"])
@example(sent=['{"type": "asr_start", "transport": "websocket"}', b"\xff" * 1001])
@example(sent=['{"type": "interrupt", "id": "\\ud800"}', '{"type": "asr_stop"}'])
@example(sent=['{"type": "stop_session", "id": "\\udc00"}'])
@example(sent=['{"type": "stop_session", "id": 5}'])
def test_no_frame_ends_a_session_with_1011_or_leaves_a_traceback(
    hostile_server: Daphne, sent: list[str | bytes]
) -> None:
    _check_session_survived(hostile_server, sent, len(hostile_server.log()))


def test_lone_surrogates_are_stored_and_echoed_as_replacement_characters(
    hostile_server: Daphne,
) -> None:
    async def body() -> dict[str, Any]:
        async with websockets.connect(hostile_server.url, max_size=None) as ws:
            init = json.loads(await ws.recv())
            await ws.send(
                '{"type": "text_message", "text": "caf\\u00e9 \\ud800!", "id": "t\\udfff"}'
            )
            for _ in range(500):
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event["type"] == "text_response":
                    return {"session_id": init["session_id"], "response": event}
        raise AssertionError("no text_response")

    result = run(body())
    assert result["response"]["ref"] == "t\ufffd"
    [user] = Message.objects.filter(session_id=result["session_id"], role="user")
    assert user.text == "café \ufffd!"
    assert "café \ufffd" in result["response"]["text"]  # the persona responder quotes it


def test_lone_surrogates_from_the_model_are_streamed_and_stored_as_replacement_characters(
    log_dir: Path, openai_server: Any
) -> None:
    """The same rule for the other way in: an LLM stream may escape a broken emoji."""
    openai_server.reset()
    openai_server.behaviour.reply = "Smile \ud83d now."
    proc, port = daphne_with(
        log_dir,
        "daphne-surrogate-llm",
        LLM_BACKEND="openai",
        LLM_BASE_URL=openai_server.base_url,
        LLM_MODEL="fake-model",
        LLM_API_KEY=openai_server.api_key,
    )
    try:

        async def body() -> list[dict[str, Any]]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/") as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "text_message", "text": "Hello"}))
                events: list[dict[str, Any]] = []
                for _ in range(500):
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                    if events[-1]["type"] in ("tts_complete", "error"):
                        return events
                raise AssertionError(f"the reply never ended: {events[-5:]}")

        events = run(body())
        [response] = [e for e in events if e["type"] == "text_response"]
        deltas = "".join(e["delta"] for e in events if e["type"] == "text_delta")
        assert response["text"] == deltas == "Smile \ufffd now."
        assert events[-1]["type"] == "tts_complete"
        reply = Message.objects.get(pk=response["message_id"])
        for _ in range(100):  # saved once the speech is done, beside the last event
            if reply.text:
                break
            time.sleep(0.1)
            reply.refresh_from_db()
        assert reply.text == "Smile \ufffd now."
        assert "Traceback" not in proc.log_path.read_text(errors="replace")
    finally:
        proc.stop()
        openai_server.reset()


def test_a_failure_while_handling_a_frame_answers_err_internal_and_the_session_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The safety net under every frame, tried with a fault injected in-process (no frame a
    client can send reaches it any more: the tests above would fail if one did)."""

    async def broken(self: ChatConsumer, message: dict[str, Any], ref: str | None) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(ChatConsumer, "on_interrupt", broken)

    async def body() -> list[dict[str, Any]]:
        communicator = WebsocketCommunicator(application, "/ws/chat/")
        connected, _ = await communicator.connect()
        assert connected
        await communicator.receive_json_from()
        await communicator.send_json_to({"type": "interrupt", "id": "i1"})
        error = await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to({"type": "ping", "id": "p1"})
        pong = await communicator.receive_json_from(timeout=10)
        await communicator.disconnect()
        return [error, pong]

    error, pong = run(body())
    assert error["type"] == "error" and error["code"] == "ERR_INTERNAL" and error["ref"] == "i1"
    assert pong["type"] == "pong" and pong["ref"] == "p1"
    [record] = [r for r in caplog.records if "a client frame failed" in r.getMessage()]
    assert record.exc_info is not None  # the bug is logged with its traceback, to be fixed


def test_oversized_message_is_closed_with_1009_and_the_server_keeps_serving(
    hostile_server: Daphne,
) -> None:
    async def body() -> tuple[int | None, str, dict[str, Any]]:
        async with websockets.connect(hostile_server.url, max_size=None) as ws:
            init = json.loads(await ws.recv())
            try:  # 21 MiB, over 2 × MAX_UPLOAD_BYTES
                await ws.send(b"\x00" * (21 * 1024 * 1024))
                await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed:
                pass
            code = ws.close_code
            session_id = init["session_id"]
        async with websockets.connect(hostile_server.url, max_size=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "ping", "id": "after"}))
            return code, session_id, json.loads(await asyncio.wait_for(ws.recv(), 10))

    code, session_id, pong = run(body())
    assert code == 1009
    _wait_ended(session_id)
    assert pong["type"] == "pong" and pong["ref"] == "after"


def test_text_frame_that_is_not_utf8_is_closed_with_1007_and_the_session_ends(
    hostile_server: Daphne,
) -> None:
    async def body() -> tuple[str, int | None]:
        async with websockets.connect(hostile_server.url) as ws:
            init = json.loads(await ws.recv())
            await ws.send(b'{"type": "ping", "id": "\xed\xa0\x80"}', text=True)
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed:
                pass
            return init["session_id"], ws.close_code

    session_id, code = run(body())
    assert code == 1007
    _wait_ended(session_id)


def _wait_ended(session_id: str) -> None:
    """The session's row ends as disconnected (handled beside the closing handshake)."""
    session = ChatSession.objects.get(pk=session_id)
    for _ in range(100):
        if session.ended_at is not None:
            break
        time.sleep(0.1)
        session.refresh_from_db()
    assert session.end_reason == EndReason.DISCONNECTED


def test_hostile_media_paths_are_refused_with_one_log_line_each(hostile_server: Daphne) -> None:
    start = len(hostile_server.log())
    paths = {
        "/media/..%2f..%2fetc%2fpasswd": 400,
        "/media/%2e%2e/%2e%2e/secret_key": 400,
        "/media/" + "a/" * 3000 + "x": 404,  # a name too long for the filesystem
    }
    for path, status in paths.items():
        conn = http.client.HTTPConnection("127.0.0.1", hostile_server.port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == status, path[:60]
        assert b"root:" not in response.read()
        conn.close()
    log = hostile_server.log()[start:]
    assert "Traceback" not in log and "SuspiciousFileOperation" not in log, log[-3000:]
    assert log.count("refused media path outside MEDIA_ROOT") == 2


def test_session_ends_at_once_when_its_consumer_fails(log_dir: Path) -> None:
    """An exception outside the receive path (here a worker event the consumer cannot read)
    still ends the session's row and leaves its group, instead of waiting for the cleanup."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    proc, port = daphne_with(log_dir, "daphne-consumer-fails")
    try:

        async def body() -> tuple[str, int | None]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/") as ws:
                init = json.loads(await ws.recv())
                bad = {"type": "video_progress", "task_id": "t", "progress": "not a number"}
                await asyncio.to_thread(_publish, init["session_id"], bad)
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except websockets.ConnectionClosed:
                    pass
                return init["session_id"], ws.close_code

        def _publish(session_id: str, event: dict[str, Any]) -> None:
            group = ChatSession.objects.get(pk=session_id).group
            async_to_sync(get_channel_layer().group_send)(
                group, {"type": "session.event", "event": event}
            )

        session_id, code = run(body())
        session = ChatSession.objects.get(pk=session_id)
        assert code == 1011  # a server bug, said as such to the client
        assert session.ended_at is not None and session.end_reason == EndReason.DISCONNECTED
        assert _group_members(session.group) == 0
    finally:
        proc.stop()


def _group_members(group: str) -> int:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()

    async def count() -> int:
        connection = layer.connection(layer.consistent_hash(group))
        return await connection.zcard(layer._group_key(group))

    return async_to_sync(count)()


async def _webrtc_session(url: str, client: ClientPeer) -> Any:
    """A session whose peer connection is up (the case that kept the process from exiting)."""
    ws = await websockets.connect(url)
    await ws.recv()
    await ws.send(json.dumps({"type": "offer", "sdp": await client.offer(), "sdp_type": "offer"}))
    for _ in range(50):
        event = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if event["type"] == "answer":
            await client.accept(event["sdp"])
        elif event["type"] == "connected":
            return ws
    raise AssertionError("WebRTC did not connect")


async def _until_pong(ws: Any, ref: str) -> None:
    for _ in range(1000):
        frame = await asyncio.wait_for(ws.recv(), 20)
        if isinstance(frame, str):
            event = json.loads(frame)
            if event["type"] == "pong" and event.get("ref") == ref:
                return
    raise AssertionError(f"no pong {ref!r}")


async def _until_closed(ws: Any) -> None:
    """Read (a reply may still stream) until the server's end closes the socket."""
    try:
        async with asyncio.timeout(20):
            async for _ in ws:
                pass
    except websockets.ConnectionClosed:
        pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_web_process_shuts_down_cleanly_with_sessions_open(log_dir: Path, sig: int) -> None:
    """Sessions open in every state (a reply streaming, a recognition span, a WebRTC peer):
    the signal ends each of them and the process exits by itself, with a clean log."""
    proc, port = daphne_with(log_dir, f"daphne-shutdown-{sig}")
    try:

        async def body() -> tuple[list[str], list[int | None]]:
            url = f"ws://127.0.0.1:{port}/ws/chat/"
            sockets = [await websockets.connect(url) for _ in range(2)]
            ids = [json.loads(await ws.recv())["session_id"] for ws in sockets]
            client = ClientPeer()
            try:
                sockets.append(await _webrtc_session(url, client))
                await sockets[0].send(json.dumps({"type": "text_message", "text": "A story?"}))
                await sockets[1].send(json.dumps({"type": "asr_start", "transport": "websocket"}))
                await sockets[1].send(b"\x00\x01" * 1600)
                await sockets[2].send(json.dumps({"type": "asr_start", "transport": "webrtc"}))
                for ws in sockets:  # every frame sent so far has been handled
                    await ws.send(json.dumps({"type": "ping", "id": "sync"}))
                    await _until_pong(ws, "sync")
                proc.signal(sig)
                for ws in sockets:
                    await _until_closed(ws)
            finally:
                await client.close()
            return ids, [ws.close_code for ws in sockets]

        ids, codes = run(body())
        assert proc.popen.wait(30) == 0  # exits by itself, not killed
        log = proc.log_path.read_text(errors="replace")
        assert "Task was destroyed" not in log and "Traceback" not in log, log[-3000:]
        assert ChatSession.objects.filter(pk__in=ids, ended_at__isnull=False).count() == 2
        assert not ChatSession.objects.filter(ended_at__isnull=True).exists()
        assert 1011 not in codes
    finally:
        proc.stop()


def test_a_client_that_closes_while_events_stream_to_it_leaves_no_error(log_dir: Path) -> None:
    """Events still on their way to a session whose client has just closed its socket (a
    reply streaming, a worker's progress) are dropped quietly: the client is gone and its
    disconnect ends the session; no 'Attempt to send on a closed protocol' escapes."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    proc, port = daphne_with(log_dir, "daphne-closing-client")

    def stream(group: str, count: int) -> None:
        async def send_all() -> None:
            layer = get_channel_layer()
            for n in range(count):
                event = {"type": "text_delta", "delta": f"piece {n} ", "message_id": "m"}
                await layer.group_send(group, {"type": "session.event", "event": event})

        async_to_sync(send_all)()

    async def one() -> None:
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/")
        init = json.loads(await ws.recv())
        group = await asyncio.to_thread(
            lambda: ChatSession.objects.get(pk=init["session_id"]).group
        )
        streaming = asyncio.create_task(asyncio.to_thread(stream, group, 200))
        await ws.recv()  # the first piece: the rest are on their way
        await ws.close()
        await streaming

    try:
        for _ in range(40):
            run(one())
        time.sleep(1.0)
        log = proc.log_tail(400_000)
        assert "closed protocol" not in log
        assert "Exception inside application" not in log
    finally:
        proc.stop()
