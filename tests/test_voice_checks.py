"""`manage.py check_providers` reports whether the avatars' cloned voices are usable."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from avatars.models import Avatar, VoiceSource, VoiceState
from chat.providers.tts.enrollment import CosyVoiceEnrollment
from tests.fakes.dashscope_server import DashScopeServer

pytestmark = pytest.mark.django_db

SAMPLE_URL = "https://media.example.test/voices/sample.wav"


def clone(avatar: Avatar, voice_id: str, model: str = "cosyvoice-v2") -> None:
    Avatar.objects.filter(pk=avatar.pk).update(
        voice_source=VoiceSource.CLONED,
        cloned_voice=voice_id,
        cloned_voice_model=model,
        voice_state=VoiceState.READY if voice_id else VoiceState.FAILED,
        voice_message="" if voice_id else "no continuous speech",
    )


def voice_lines(out: StringIO) -> dict[str, str]:
    return {
        line.split()[1]: line for line in out.getvalue().splitlines() if line.startswith("voice ")
    }


@pytest.fixture
def voices(dashscope: DashScopeServer) -> Any:
    dashscope.forget_voices()
    yield CosyVoiceEnrollment.from_settings()
    dashscope.forget_voices()


def test_usable_and_unusable_cloned_voices_are_reported(
    dashscope: DashScopeServer, voices: CosyVoiceEnrollment, avatars: list[Avatar]
) -> None:
    aria, lin = (next(a for a in avatars if a.slug == s) for s in ("aria", "lin"))
    ready = voices.create(SAMPLE_URL, "aria")
    gone = voices.create(SAMPLE_URL, "lin")
    voices.delete(gone)
    clone(aria, ready)
    clone(lin, gone)
    out = StringIO()
    with pytest.raises(CommandError, match=r"voice \(lin\)"):
        call_command("check_providers", "--stage", "voice", stdout=out)
    lines = voice_lines(out)
    assert " ok " in lines["aria"] and f"{ready} spoke" in lines["aria"]
    assert " failed " in lines["lin"] and "deleted at DashScope" in lines["lin"]
    spoken = [t.payload["parameters"]["voice"] for t in dashscope.of("tts")]
    assert spoken == [ready]  # the usable one really spoke


def test_a_voice_not_ready_for_another_model_or_never_enrolled_is_unusable(
    dashscope: DashScopeServer, voices: CosyVoiceEnrollment, avatars: list[Avatar], settings: Any
) -> None:
    aria, lin = (next(a for a in avatars if a.slug == s) for s in ("aria", "lin"))
    dashscope.behaviour.voice_ready_after = 60
    clone(aria, voices.create(SAMPLE_URL, "aria"))
    clone(lin, "")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("check_providers", "--stage", "voice", stdout=out)
    lines = voice_lines(out)
    assert "is DEPLOYING; the preset speaks" in lines["aria"]
    assert "no cloned voice yet" in lines["lin"] and "no continuous speech" in lines["lin"]

    dashscope.behaviour.voice_ready_after = 0
    other = voices.create(SAMPLE_URL, "aria")
    clone(aria, other)
    settings.DASHSCOPE_TTS_MODEL = "cosyvoice-v3"
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("check_providers", "--stage", "voice", stdout=out)
    assert "was made for cosyvoice-v2, TTS speaks cosyvoice-v3" in voice_lines(out)["aria"]


@pytest.mark.usefixtures("offline_providers")
def test_without_cloned_voices_or_cloud_tts_nothing_fails(avatars: list[Avatar]) -> None:
    out = StringIO()
    call_command("check_providers", "--stage", "voice", stdout=out)
    assert out.getvalue() == ""
    clone(avatars[0], "cosyvoice-v2-aria-0123")
    out = StringIO()
    call_command("check_providers", "--stage", "voice", stdout=out)
    assert "unused: TTS_BACKEND=espeak" in voice_lines(out)["aria"]
