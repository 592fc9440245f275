"""A session's turns speak in the avatar's cloned voice, through a real web process and worker
whose CosyVoice is the loopback DashScope; a voice deleted at DashScope meanwhile falls back to
the preset and the turn still speaks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from avatars.models import Avatar, VoiceSource, VoiceState
from chat.providers.tts.enrollment import CosyVoiceEnrollment
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
