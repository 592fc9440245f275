"""Turns speak in the avatar's voice: its cloned CosyVoice voice (pre-connected sockets too),
the preset when the cloned one cannot speak, and its espeak-ng settings offline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from avatars.models import Avatar, VoiceSource, VoiceState
from avatars.voices import speaking_voice
from chat.providers import get_tts
from chat.providers.base import Voice
from chat.providers.tts.enrollment import CosyVoiceEnrollment
from chat.providers.tts.espeak import EspeakTTS
from chat.reply import ReplyRequest
from harness.procs import wait_for
from tests.fakes.dashscope_server import DashScopeServer

SAMPLE_URL = "https://media.example.test/voices/aria.wav"


@pytest.fixture
def cloned(dashscope: DashScopeServer) -> Any:
    """A ready cloned voice at the loopback DashScope."""
    dashscope.forget_voices()
    voice_id = CosyVoiceEnrollment.from_settings().create(SAMPLE_URL, "aria", "en-US")
    yield voice_id
    dashscope.forget_voices()


def voices_used(dashscope: DashScopeServer) -> list[str]:
    tasks = sorted(dashscope.of("tts"), key=lambda task: task.started_at or 0)
    return [task.payload["parameters"]["voice"] for task in tasks]


def test_a_ready_cloned_voice_speaks(dashscope: DashScopeServer, cloned: str) -> None:
    audio = asyncio.run(get_tts().synthesize("Hello there.", Voice("longwan_v2", cloned), "en-US"))
    assert audio
    assert voices_used(dashscope) == [cloned]


def test_a_voice_deleted_at_dashscope_falls_back_to_the_preset_with_a_warning(
    dashscope: DashScopeServer, cloned: str, caplog: pytest.LogCaptureFixture
) -> None:
    CosyVoiceEnrollment.from_settings().delete(cloned)
    voice = Voice("longwan_v2", cloned)
    with caplog.at_level(logging.WARNING):
        first = asyncio.run(get_tts().synthesize("Hello there.", voice, "en-US"))
        second = asyncio.run(get_tts().synthesize("How are you?", voice, "en-US"))
    assert first and second  # never a failed turn
    # refused once, then the preset; the next sentence goes straight to the preset
    assert voices_used(dashscope) == [cloned, "longwan_v2", "longwan_v2"]
    warnings = [r.getMessage() for r in caplog.records if "cannot speak" in r.getMessage()]
    assert len(warnings) == 1 and cloned in warnings[0] and "longwan_v2" in warnings[0]


def test_a_voice_not_ready_at_dashscope_falls_back_to_the_preset(
    dashscope: DashScopeServer,
) -> None:
    dashscope.forget_voices()
    dashscope.behaviour.voice_ready_after = 60
    deploying = CosyVoiceEnrollment.from_settings().create(SAMPLE_URL, "aria")
    audio = asyncio.run(get_tts().synthesize("Hi.", Voice("", deploying), "en-US"))
    assert audio and voices_used(dashscope) == [deploying, "longxiaochun_v2"]
    dashscope.forget_voices()


def test_a_cloned_voice_speaks_on_a_connection_open_before_it_was_asked_for(
    dashscope: DashScopeServer, cloned: str, settings: Any, on_loop: Callable[..., Any]
) -> None:
    """Connections are not tied to a voice: a cloned voice's sentence starts on a socket the
    loop had open already (here, the one the preset's sentence used), with its run-task."""
    settings.DASHSCOPE_TTS_PRECONNECT = 1
    tts = get_tts()
    assert on_loop(tts.synthesize("First.", "longwan_v2", "en-US"))
    assert wait_for(lambda: dashscope.idle_connections >= 1, 5), "no socket left open"
    asked = time.monotonic()
    assert on_loop(tts.synthesize("Second.", Voice("longwan_v2", cloned), "en-US"))
    second = [t for t in dashscope.of("tts") if t.texts == ["Second."]][0]
    assert second.payload["parameters"]["voice"] == cloned
    assert second.opened_at < asked < (second.started_at or 0)


@pytest.mark.django_db
def test_turns_take_the_cloned_voice_only_when_it_is_ready(
    avatars: list[Avatar], caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    aria = avatars[0]
    Avatar.objects.filter(pk=aria.pk).update(
        voice_source=VoiceSource.CLONED,
        cloned_voice="cosyvoice-v2-aria-abc",
        cloned_voice_model=settings.DASHSCOPE_TTS_MODEL,
        voice_state=VoiceState.ENROLLING,
        espeak_voice="en-us+f3",
        espeak_pitch=70,
        espeak_rate=200,
    )
    aria.refresh_from_db()
    settings.TTS_BACKEND = "espeak"  # the cloned voice means nothing offline: no warning
    with caplog.at_level(logging.WARNING):
        request = ReplyRequest.of("s", "voice", "en-US", aria, 1, None)
    assert request.voice == Voice("longxiaochun_v2", "", "en-us+f3", 70, 200)
    assert "cloned voice is not usable" not in caplog.text
    settings.TTS_BACKEND = "dashscope"
    with caplog.at_level(logging.WARNING):
        assert ReplyRequest.of("s", "voice", "en-US", aria, 1, None).voice == request.voice
    assert "cloned voice is not usable" in caplog.text

    aria.voice_state = VoiceState.READY
    assert speaking_voice(aria).cloned == "cosyvoice-v2-aria-abc"
    aria.cloned_voice_model = "cosyvoice-v1"  # enrolled for another model than configured
    assert speaking_voice(aria).cloned == ""
    aria.voice_source, aria.cloned_voice_model = VoiceSource.PRESET, settings.DASHSCOPE_TTS_MODEL
    assert speaking_voice(aria).cloned == ""


def test_espeak_speaks_with_the_avatars_voice_pitch_and_rate() -> None:
    tts = EspeakTTS(timeout_s=30)
    text = "The quick brown fox jumps over the lazy dog."

    def say(voice: Voice) -> bytes:
        return asyncio.run(tts.synthesize(text, voice, "en-US"))

    plain, slow, fast = say(Voice()), say(Voice(rate=100)), say(Voice(rate=350))
    assert len(slow) > 1.5 * len(plain) > 2 * len(fast)  # durations follow the rate
    assert say(Voice(pitch=90)) != plain
    assert say(Voice(espeak="en-us+f3")) != plain
    # a CosyVoice preset means nothing to espeak-ng: the language's voice speaks
    assert say(Voice(preset="longxiaochun_v2")) == plain
