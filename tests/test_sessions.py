"""The session protocol against a real daphne over real WebSockets, message by message."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
import websockets

from chat.models import ChatSession, Message
from tests.fixtures_sessions import Client, daphne_with, run

pytestmark = pytest.mark.usefixtures("live_avatars")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def session_dir(media_root: Path, session_id: str) -> Path:
    return media_root / "sessions" / session_id


def test_init_lists_every_field_of_the_contract(connect) -> None:
    async def body() -> dict:
        async with connect("?mode=video&avatar=lin&lang=zh-CN") as client:
            return await client.recv()

    init = run(body())
    assert init["type"] == "init"
    assert init["mode"] == "video"
    assert set(init) >= {"session_id", "session_token", "mode", "avatar", "server_info"}
    assert set(init["avatar"]) >= {"id", "slug", "name", "persona", "image_url", "voice"}
    assert init["avatar"]["slug"] == "lin"
    info = init["server_info"]
    assert set(info) >= {
        "version",
        "heartbeat_interval_s",
        "session_timeout_s",
        "ice_servers",
        "max_upload_bytes",
        "audio_formats",
        "providers",
    }
    assert info["heartbeat_interval_s"] == 30
    assert info["session_timeout_s"] == 600
    assert info["providers"] == {
        "asr": "pocketsphinx",
        "llm": "persona",
        "tts": "espeak",
        "renderer": "lite",
    }
    assert fetch(init["avatar"]["image_url"]).startswith(b"\x89PNG")
    session = ChatSession.objects.get(pk=init["session_id"])
    assert session.avatar.slug == "lin" and session.language == "zh-CN"


def test_default_avatar_and_mode(connect) -> None:
    async def body() -> dict:
        async with connect() as client:
            return await client.recv()

    init = run(body())
    assert init["mode"] == "voice" and init["avatar"]["slug"] == "aria"


def test_ping_echoes_timestamp_and_id(connect) -> None:
    async def body() -> dict:
        async with connect() as client:
            await client.recv()
            await client.send(type="ping", timestamp=1234.5, id="p-1")
            return await client.recv()

    pong = run(body())
    assert pong["type"] == "pong" and pong["timestamp"] == 1234.5 and pong["ref"] == "p-1"
    assert pong["server_time"] > 1_700_000_000_000


def test_text_turn_streams_the_reply_and_speaks_it(connect, media_root: Path) -> None:
    async def body() -> Client:
        async with connect("?mode=voice") as client:
            await client.recv()
            await client.send(type="text_message", text="What should I see in Paris?", id="t1")
            complete = await client.until("tts_complete")
            client.wav = await asyncio.to_thread(
                fetch, complete["audio_url"]
            )  # before the session ends
            return client

    client = run(body())
    deltas, [response] = client.of("text_delta"), client.of("text_response")
    assert len(deltas) > 1
    assert "".join(d["delta"] for d in deltas) == response["text"]
    assert "Paris" in response["text"]  # the persona responder echoes what it understood
    assert all(e.get("ref") == "t1" for e in deltas + [response])
    [start], [complete] = client.of("tts_start"), client.of("tts_complete")
    assert start["transport"] == "url" and start["message_id"] == response["message_id"]
    assert complete["request_id"] == start["request_id"] and complete["duration_ms"] > 500
    wav = client.wav
    assert wav[:4] == b"RIFF" and len(wav) > 16000
    reply = Message.objects.get(pk=response["message_id"])
    assert (
        reply.role == "assistant"
        and reply.text == response["text"]
        and reply.reply_to.text == "What should I see in Paris?"
    )
    assert {"llm_first_ms", "tts_first_ms"} <= set(reply.timings)


def test_second_turn_has_the_history(connect) -> None:
    async def body() -> Client:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            for text in ("My name is Ada.", "Do you remember me?"):
                await client.send(type="text_message", text=text)
                await client.until("text_response")
            client.session_id = init["session_id"]
            return client

    client = run(body())
    assert [m.text for m in Message.objects.filter(session_id=client.session_id, role="user")] == [
        "My name is Ada.",
        "Do you remember me?",
    ]


BAD_FRAMES = [
    ("not json {", "ERR_BAD_MESSAGE", None),
    ("[1, 2]", "ERR_BAD_MESSAGE", None),
    (json.dumps({"type": 7}), "ERR_BAD_MESSAGE", None),
    (json.dumps({"type": "text_message", "text": 42, "id": "a"}), "ERR_BAD_MESSAGE", "a"),
    (json.dumps({"type": "text_message", "text": "   ", "id": "b"}), "ERR_BAD_MESSAGE", "b"),
    (json.dumps({"type": "text_message", "text": "x" * 2001}), "ERR_BAD_MESSAGE", None),
    (json.dumps({"type": "ping", "id": "x" * 65}), "ERR_BAD_MESSAGE", None),
    (json.dumps({"type": "dance", "id": "c"}), "ERR_UNKNOWN_TYPE", "c"),
    (json.dumps({"type": "interrupt", "id": "d"}), "ERR_STATE", "d"),
    ("x" * 70000, "ERR_TOO_LARGE", None),
]


@pytest.mark.parametrize(("frame", "code", "ref"), BAD_FRAMES)
def test_bad_messages_get_their_code_and_the_session_stays_usable(
    connect, frame: str, code: str, ref: str | None
) -> None:
    async def body() -> tuple[dict, dict]:
        async with connect() as client:
            await client.recv()
            await client.ws.send(frame)
            err = await client.recv()
            await client.send(type="ping", timestamp=1)
            return err, await client.recv()

    err, pong = run(body())
    assert err["type"] == "error" and err["code"] == code and err["ref"] == ref
    assert isinstance(err["message"], str) and err["retryable"] is False
    assert pong["type"] == "pong"


def test_a_flood_is_rate_limited_once_and_the_session_recovers(connect) -> None:
    async def body() -> Client:
        async with connect() as client:
            await client.recv()
            for n in range(60):
                await client.send(type="ping", timestamp=n)
            await client.until("pong")

            while True:  # read what the flood produced until the socket is quiet
                try:
                    await client.recv(timeout=1.5)
                except TimeoutError:
                    break
            await client.send(type="ping", timestamp=999)
            await client.until("pong")
            return client

    client = run(body())
    limited = [e for e in client.of("error") if e["code"] == "ERR_RATE_LIMITED"]
    assert len(limited) == 1 and limited[0]["retryable"] is True
    pongs = client.of("pong")
    assert 20 <= len(pongs) < 61
    assert pongs[-1]["timestamp"] == 999


@pytest.mark.parametrize(
    ("query", "code", "close"),
    [
        ("?mode=karaoke", "ERR_MODE_INVALID", 4400),
        ("?avatar=nobody", "ERR_AVATAR_NOT_FOUND", 4404),
        ("?lang=en_US!", "ERR_BAD_MESSAGE", 4400),
    ],
)
def test_refused_sessions_close_with_their_code(connect, query: str, code: str, close: int) -> None:
    async def body() -> tuple[dict, int]:
        async with connect(query) as client:
            err = await client.recv()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await client.recv()
            return err, closed.value.rcvd.code

    err, close_code = run(body())
    assert err["code"] == code and close_code == close
    assert ChatSession.objects.count() == 0


def test_foreign_origin_is_refused_at_the_handshake(connect) -> None:
    async def body() -> None:
        async with connect("", headers={"Origin": "http://evil.example"}):
            pass

    with pytest.raises(websockets.InvalidStatus) as refused:
        run(body())
    assert refused.value.response.status_code == 403


def test_stop_session_ends_it_and_deletes_every_file(connect, media_root: Path) -> None:
    async def body() -> tuple[dict, dict, int]:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            await client.send(type="text_message", text="Tell me about Rome.")
            await client.until("tts_complete")
            assert list(session_dir(media_root, init["session_id"]).rglob("*.wav"))
            await client.send(type="stop_session")
            ended = await client.until("session_ended")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await client.recv()
            return init, ended, closed.value.rcvd.code

    init, ended, code = run(body())
    assert ended["session_id"] == init["session_id"] and ended["reason"] == "stopped"
    assert ended["files_deleted"] >= 1 and code == 1000
    assert not session_dir(media_root, init["session_id"]).exists()
    session = ChatSession.objects.get(pk=init["session_id"])
    assert session.ended_at is not None and session.end_reason == "stopped"


def test_dropped_connection_ends_the_session(connect, media_root: Path) -> None:
    async def body() -> str:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            await client.send(type="text_message", text="Hello there.")
            await client.until("tts_complete")
        return init["session_id"]

    session_id = run(body())
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        not ChatSession.objects.get(pk=session_id).files_deleted  # set after the deletion
    ):
        time.sleep(0.1)
    session = ChatSession.objects.get(pk=session_id)
    assert session.end_reason == "disconnected"
    assert not session_dir(media_root, session_id).exists()


def test_idle_session_times_out(live_avatars, log_dir: Path) -> None:
    proc, port = daphne_with(log_dir, "daphne-idle", SESSION_TIMEOUT_S="2")

    async def body() -> tuple[dict, dict, int]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/") as ws:
            client = Client(ws)
            await client.recv()
            await client.send(type="ping", timestamp=1)
            await client.until("pong")
            err = await client.until("error", timeout=10)
            ended = await client.until("session_ended", timeout=5)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await client.recv()
            return err, ended, closed.value.rcvd.code

    try:
        err, ended, code = run(body())
    finally:
        proc.stop()
    assert err["code"] == "ERR_SESSION_TIMEOUT"
    assert ended["reason"] == "timeout" and code == 4408


def test_token_auth_when_required(live_avatars, log_dir: Path) -> None:
    proc, port = daphne_with(
        log_dir, "daphne-auth", CHAT_REQUIRE_TOKEN="true", CHAT_TOKENS="s3cret,other"
    )

    async def attempt(query: str) -> tuple[dict, int | None]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/{query}") as ws:
            first = json.loads(await ws.recv())
            if first["type"] == "init":
                return first, None
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return first, closed.value.rcvd.code

    try:
        assert run(attempt(""))[1] == 4401
        refused, code = run(attempt("?token=wrong"))
        assert refused["code"] == "ERR_AUTH" and code == 4401
        init, _ = run(attempt("?token=other"))
        assert init["type"] == "init"
    finally:
        proc.stop()


def test_events_a_worker_publishes_together_arrive_as_separate_frames_in_order(connect) -> None:
    """A worker streaming a reply sends what queued up meanwhile in one message of the channel
    layer (chat.events.OrderedPublisher); the client still gets one frame per event, in order."""
    from asgiref.sync import async_to_sync

    from chat.events import OrderedPublisher

    def publish_all(session_id: str) -> None:
        async def send() -> None:
            publisher = OrderedPublisher(session_id)
            for n in range(30):  # queued faster than they go out: most share a message
                await publisher.send({"type": "text_delta", "delta": f"{n} ", "message_id": 0})
            await publisher.flush()

        async_to_sync(send)()

    async def body() -> list[dict]:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            await asyncio.to_thread(publish_all, init["session_id"])
            return [await client.recv() for _ in range(30)]

    frames = run(body())
    assert [f["type"] for f in frames] == ["text_delta"] * 30
    assert "".join(f["delta"] for f in frames) == "".join(f"{n} " for n in range(30))
