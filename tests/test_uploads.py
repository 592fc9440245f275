"""Voice turns from uploaded audio: a real daphne, a real Celery worker, real Redis."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

from chat.audio import AudioInvalid, decode_upload
from chat.models import Message
from tests.audio import encode, speak, write_wav
from tests.fixtures_sessions import Client, run

pytestmark = pytest.mark.usefixtures("live_avatars", "celery_worker")

UTTERANCE = "what is the weather like in london today"


def http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def files_of(media_root: Path, session_id: str) -> list[Path]:
    return [p for p in (media_root / "sessions" / session_id).rglob("*") if p.is_file()]


async def voice_turn(client: Client, audio: bytes) -> Client:
    await client.ws.send(audio)
    complete = await client.until("tts_complete", timeout=60)
    status, body = await asyncio.to_thread(http, complete["audio_url"])
    client.reply_audio = body if status == 200 else b""
    return client


def test_spoken_utterance_gives_transcript_reply_and_playable_speech(
    connect, media_root: Path
) -> None:
    async def body() -> Client:
        async with connect("?mode=voice") as client:
            client.init = await client.recv()
            await voice_turn(client, speak(UTTERANCE).read_bytes())
            while not [
                e
                for e in client.of("turn_progress")
                if e["step"] == "synthesize" and e["state"] == "done"
            ]:
                await client.until("turn_progress")
            return client

    client = run(body(), timeout=90)
    [asr] = client.of("asr_result")
    assert "weather" in asr["text"] and "london" in asr["text"]
    [response] = client.of("text_response")
    assert "london" in response["text"].lower() and response["reply_to"] == asr["message_id"]
    assert len(client.of("text_delta")) > 1
    [start], [complete] = client.of("tts_start"), client.of("tts_complete")
    assert start["transport"] == "url" and start["message_id"] == response["message_id"]
    with wave.open(io.BytesIO(client.reply_audio)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    assert abs(seconds * 1000 - complete["duration_ms"]) < 50 and seconds > 1
    # progress of every step from Celery's signals: each step starts in chain order and is done
    # after it started (the next step may start on another worker before the signal of the last)
    steps = [(e["step"], e["state"]) for e in client.of("turn_progress")]
    assert sorted(steps) == sorted(
        (s, state) for s in ("transcribe", "reply", "synthesize") for state in ("started", "done")
    )
    assert [s for s, state in steps if state == "started"] == ["transcribe", "reply", "synthesize"]
    for step in ("transcribe", "reply", "synthesize"):
        assert steps.index((step, "started")) < steps.index((step, "done"))
    types = [e["type"] for e in client.events]
    assert types.index("asr_result") < types.index("text_response") < types.index("tts_complete")
    user = Message.objects.get(pk=asr["message_id"])
    assert (
        user.audio_url.split("?")[0].endswith(".wav")
        and "asr_ms" in user.timings
        and user.text == asr["text"]
    )
    reply = Message.objects.get(pk=response["message_id"])
    assert reply.audio and {"llm_ms", "tts_ms", "reply_step_ms", "synthesize_step_ms"} <= set(
        reply.timings
    )


@pytest.mark.parametrize("kind", ["webm", "ogg", "mp3"])
def test_compressed_uploads_are_decoded(kind: str) -> None:
    pcm = decode_upload(encode(speak(UTTERANCE), kind), max_seconds=60)
    assert 2.0 < len(pcm) / 32000 < 4.0


def test_webm_upload_is_recognised(connect) -> None:
    async def body() -> Client:
        async with connect("?mode=voice") as client:
            await client.recv()
            await client.ws.send(encode(speak(UTTERANCE), "webm"))
            await client.until("asr_result", timeout=60)
            return client

    assert "london" in run(body(), timeout=90).of("asr_result")[0]["text"]


def silent_wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    write_wav(buffer, np.zeros(int(16000 * seconds), dtype=np.int16), 16000)
    return buffer.getvalue()


def long_wav(seconds: float) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buffer = io.BytesIO()
    write_wav(buffer, (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), 16000)
    return buffer.getvalue()


BAD_UPLOADS = {
    "garbage": (b"\x00\x01garbage" * 50, "ERR_AUDIO_INVALID", "decodable"),
    "image": (
        Path("fixtures/avatars/aria.png").read_bytes(),
        "ERR_AUDIO_INVALID",
        "unsupported audio format",
    ),
    "silence": (silent_wav(2), "ERR_AUDIO_INVALID", "silent"),
    "too long": (long_wav(21), "ERR_AUDIO_INVALID", "longer than 20 s"),
    "empty": (b"", "ERR_AUDIO_INVALID", "empty"),
    "too large": (b"\x00" * (10 * 1024 * 1024 + 1), "ERR_TOO_LARGE", "limited to"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_uploads_are_refused_and_not_stored(connect, media_root: Path, name: str) -> None:
    data, code, words = BAD_UPLOADS[name]

    async def body() -> tuple[dict, dict, str]:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            await client.ws.send(data)
            err = await client.until("error")
            await client.send(type="ping", timestamp=1)
            return err, await client.until("pong"), init["session_id"]

    err, pong, session_id = run(body())
    assert err["code"] == code and words in err["message"]
    assert files_of(media_root, session_id) == []
    assert not Message.objects.filter(session_id=session_id).exists()


def test_http_upload_with_the_session_token(connect, chat_server: str) -> None:
    base = chat_server.replace("ws://", "http://")

    async def body() -> tuple[Client, list]:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            url = f"{base}/api/sessions/{init['session_id']}/audio?id=up-1"
            wav = speak(UTTERANCE).read_bytes()
            results = [
                await asyncio.to_thread(http, url, wav, {"Authorization": "Bearer wrong"}),
                await asyncio.to_thread(
                    http, url, b"not audio", {"Authorization": f"Bearer {init['session_token']}"}
                ),
                await asyncio.to_thread(  # an `id` as long as a text frame's may not be
                    http,
                    url.replace("id=up-1", "id=" + "x" * 65),
                    wav,
                    {"Authorization": f"Bearer {init['session_token']}"},
                ),
                await asyncio.to_thread(
                    http,
                    url,
                    wav,
                    {
                        "Authorization": f"Bearer {init['session_token']}",
                        "Content-Type": "audio/wav",
                    },
                ),
            ]
            await client.until("tts_complete", timeout=60)
            return client, results

    client, (wrong, bad, long_id, good) = run(body(), timeout=90)
    assert wrong[0] == 401 and json.loads(wrong[1])["error"]["code"] == "ERR_AUTH"
    assert bad[0] == 400 and json.loads(bad[1])["error"]["code"] == "ERR_AUDIO_INVALID"
    assert long_id[0] == 400 and json.loads(long_id[1])["error"]["code"] == "ERR_BAD_MESSAGE"
    assert good[0] == 202
    accepted = json.loads(good[1])
    [asr] = client.of("asr_result")
    assert (
        asr["message_id"] == accepted["message_id"]
        and asr["ref"] == "up-1"
        and "london" in asr["text"]
    )
    assert client.of("text_response")[0]["ref"] == "up-1"


def test_interrupt_revokes_the_turn_and_the_session_goes_on(connect) -> None:
    long_question = " ".join([UTTERANCE] * 3)

    async def body() -> Client:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            await client.ws.send(speak(long_question).read_bytes())
            await client.until("turn_progress")
            await client.send(type="interrupt", id="stop-it")
            await asyncio.sleep(4)  # a revoked chain must not speak any more
            while True:
                try:
                    await client.recv(timeout=0.5)
                except TimeoutError:
                    break
            client.session_id = init["session_id"]
            await client.send(type="text_message", text="Are you still there?")
            await client.until("text_response", timeout=30)
            return client

    client = run(body(), timeout=90)
    assert not [e for e in client.of("error") if e.get("ref") == "stop-it"]  # it was running
    responses = client.of("text_response")
    assert len(responses) == 1 and "still there" in responses[0]["text"]
    assert client.of("tts_start") == [] or all(
        e["message_id"] == responses[0]["message_id"] for e in client.of("tts_start")
    )


def test_ending_the_session_deletes_every_file(connect, media_root: Path) -> None:
    async def body() -> tuple[str, int, dict]:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            await voice_turn(client, speak(UTTERANCE).read_bytes())
            before = len(files_of(media_root, init["session_id"]))
            await client.send(type="stop_session")
            return init["session_id"], before, await client.until("session_ended")

    session_id, before, ended = run(body(), timeout=90)
    assert before == 2  # the user's utterance and the reply's audio
    assert ended["files_deleted"] == 2
    assert files_of(media_root, session_id) == []


def test_decode_refuses_what_is_not_audio() -> None:
    with pytest.raises(AudioInvalid):
        decode_upload(b"RIFF" + b"\x00" * 100, max_seconds=10)


def test_video_mode_turn_ends_with_a_playable_mp4(connect, media_root: Path) -> None:
    import av

    async def body() -> Client:
        async with connect("?mode=video") as client:
            await client.recv()
            await client.ws.send(speak("hello, tell me a story").read_bytes())
            ready = await client.until("video_ready", timeout=120, fail_on_error=True)
            status, client.mp4 = await asyncio.to_thread(http, ready["video_url"])
            assert status == 200
            segment = client.of("video_segment")[0]
            status, client.segment = await asyncio.to_thread(http, segment["url"])
            assert status == 200
            return client

    client = run(body(), timeout=150)
    [start] = client.of("tts_start")
    assert start["transport"] == "url"
    [queued], [ready] = client.of("video_queued"), client.of("video_ready")
    assert queued["task_id"] == ready["task_id"] and queued["position"] >= 0
    progress = [e["progress"] for e in client.of("video_progress")]
    assert progress == sorted(progress) and progress[-1] == 100
    assert {e["stage"] for e in client.of("video_progress")} >= {"started", "rendering", "done"}
    types = [e["type"] for e in client.events]
    assert (
        types.index("tts_complete")
        < types.index("video_queued")
        < types.index("video_segment")
        < types.index("video_ready")
    )
    for data in (client.mp4, client.segment):
        with av.open(io.BytesIO(data)) as container:
            assert container.streams.video and container.streams.audio
    reply = Message.objects.get(pk=queued["message_id"])
    assert reply.video and "render" in reply.timings
