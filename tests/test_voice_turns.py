"""A session's turns speak in the avatar's cloned voice, through a real web process and worker
whose CosyVoice is the loopback DashScope; a voice deleted at DashScope meanwhile falls back to
the preset and the turn still speaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from channels.testing import WebsocketCommunicator

from avatars.models import Avatar, VoiceSource, VoiceState
from chat.providers.tts.enrollment import CosyVoiceEnrollment
from echoproject.asgi import application
from tests.fakes.dashscope_server import DashScopeServer
from tests.fixtures_sessions import Client, run, separate_stack

pytestmark = pytest.mark.usefixtures("live_avatars")


@pytest.fixture(scope="module")
def cloud_tts_stack(
    django_db_setup: None, log_dir: Path, dashscope_server: DashScopeServer
) -> Iterator[str]:
    with separate_stack(
        log_dir,
        "cloud-voice",
        DASHSCOPE_API_KEY=dashscope_server.api_key,
        DASHSCOPE_HTTP_BASE_URL=dashscope_server.http_base_url,
        DASHSCOPE_WEBSOCKET_BASE_URL=dashscope_server.websocket_url,
        ASR_BACKEND="pocketsphinx",
        LLM_BACKEND="persona",
        TTS_BACKEND="dashscope",
        PROVIDER_TIMEOUT_S="5",
    ) as url:
        yield url


def test_turns_speak_in_the_cloned_voice_and_fall_back_when_it_is_deleted(
    cloud_tts_stack: str, dashscope: DashScopeServer
) -> None:
    dashscope.forget_voices()
    enrollment = CosyVoiceEnrollment.from_settings()
    voice_id = enrollment.create("https://media.example.test/voices/aria.wav", "aria")
    Avatar.objects.filter(slug="aria").update(
        voice="longjielidou_v2",
        voice_source=VoiceSource.CLONED,
        cloned_voice=voice_id,
        cloned_voice_model="cosyvoice-v2",
        voice_state=VoiceState.READY,
    )

    async def turn(client: Client, text: str, ref: str) -> None:
        await client.send(type="text_message", text=text, id=ref)
        await client.until("tts_complete", timeout=60)

    async def body() -> Client:
        async with websockets.connect(
            f"{cloud_tts_stack}?avatar=aria&mode=voice", max_size=None
        ) as ws:
            client = Client(ws)
            await client.recv()
            await turn(client, "Hello there.", "one")
            client.first = [t.payload["parameters"]["voice"] for t in dashscope.of("tts")]
            enrollment.delete(voice_id)
            client.mark = time.monotonic()
            await turn(client, "Are you still there?", "two")
            return client

    client = run(body(), timeout=150)
    assert client.first and set(client.first) == {voice_id}
    later = [t for t in dashscope.of("tts") if (t.started_at or 0) > client.mark]
    spoken = [t.payload["parameters"]["voice"] for t in sorted(later, key=lambda t: t.started_at)]
    assert spoken[0] == voice_id  # refused once ...
    assert spoken[1:] and set(spoken[1:]) == {"longjielidou_v2"}  # ... then the preset
    assert client.of("error") == []
    dashscope.forget_voices()


def test_turns_follow_the_avatars_voice_as_it_changes_during_a_session(
    cloud_tts_stack: str, dashscope: DashScopeServer
) -> None:
    """An operator's change reaches the open session's next turn: a cloned voice that became
    ready is used, and a replaced sample's old voice is no longer tried."""
    dashscope.forget_voices()
    enrollment = CosyVoiceEnrollment.from_settings()
    first_id = enrollment.create("https://media.example.test/voices/aria.wav", "aria")
    second_id = enrollment.create("https://media.example.test/voices/aria-2.wav", "aria")
    avatar = Avatar.objects.filter(slug="aria")

    async def update(**fields: str) -> None:
        await asyncio.to_thread(avatar.update, **fields)

    avatar.update(
        voice="longjielidou_v2",
        voice_source=VoiceSource.CLONED,
        cloned_voice=first_id,
        cloned_voice_model="cosyvoice-v2",
        voice_state=VoiceState.ENROLLING,
    )

    async def voices_of_turn(client: Client, text: str, ref: str) -> set[str]:
        since = time.monotonic()
        await client.send(type="text_message", text=text, id=ref)
        await client.until("tts_complete", timeout=60)
        return {
            t.payload["parameters"]["voice"]
            for t in dashscope.of("tts")
            if (t.started_at or 0) > since
        }

    async def body() -> tuple[Client, list[set[str]]]:
        async with websockets.connect(
            f"{cloud_tts_stack}?avatar=aria&mode=voice", max_size=None
        ) as ws:
            client = Client(ws)
            await client.recv()
            spoken = [await voices_of_turn(client, "Hello there.", "one")]
            await update(voice_state=VoiceState.READY)  # enrolment finished
            spoken.append(await voices_of_turn(client, "Can you hear me?", "two"))
            # the sample was replaced: a new voice, still enrolling, the old one deleted
            await update(cloned_voice=second_id, voice_state=VoiceState.ENROLLING)
            await asyncio.to_thread(enrollment.delete, first_id)
            spoken.append(await voices_of_turn(client, "Are you still there?", "three"))
            await update(voice_state=VoiceState.READY)
            spoken.append(await voices_of_turn(client, "And now?", "four"))
            return client, spoken

    client, spoken = run(body(), timeout=200)
    assert spoken == [{"longjielidou_v2"}, {first_id}, {"longjielidou_v2"}, {second_id}]
    assert client.of("error") == []
    dashscope.forget_voices()


def test_a_session_whose_cloned_voice_avatar_was_deleted_keeps_replying() -> None:
    Avatar.objects.filter(slug="aria").update(
        voice_source=VoiceSource.CLONED,
        cloned_voice="cosyvoice-v2-aria-gone",
        cloned_voice_model="cosyvoice-v2",
        voice_state=VoiceState.READY,
    )

    async def body() -> list[dict]:
        communicator = WebsocketCommunicator(application, "/ws/chat/?mode=voice&avatar=aria")
        connected, _ = await communicator.connect()
        assert connected
        events = [await communicator.receive_json_from()]
        await asyncio.to_thread(Avatar.objects.filter(slug="aria").delete)
        await communicator.send_json_to({"type": "text_message", "text": "Hello?", "id": "m1"})
        while events[-1]["type"] not in {"tts_complete", "error"}:
            events.append(await communicator.receive_json_from(timeout=30))
        await communicator.disconnect()
        return events

    events = run(body())
    assert events[0]["type"] == "init"
    assert events[-1]["type"] == "tts_complete" and events[-1].get("ref") == "m1"
