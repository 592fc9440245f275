"""An avatar's voice in the admin: samples checked with PyAV, presets with their languages,
espeak-ng settings, and the offline recogniser's languages said plainly."""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from avatars.models import Avatar, VoiceSource, VoiceState
from avatars.samples import inspect_sample
from tests.voice_samples import encode_sample


@pytest.mark.parametrize(
    ("container", "codec", "kind"),
    [("wav", "pcm_s16le", "WAV"), ("mp3", "libmp3lame", "MP3"), ("ipod", "aac", "M4A")],
)
def test_wav_mp3_and_m4a_samples_of_five_to_sixty_seconds_are_accepted(
    container: str, codec: str, kind: str
) -> None:
    info = inspect_sample(encode_sample(6, container, codec))
    assert info.kind == kind
    assert 5.9 < info.seconds < 6.2


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: encode_sample(3), "record at least 5 seconds"),
        (lambda: encode_sample(61, "mp3", "libmp3lame"), "more than 60 s"),
        (lambda: encode_sample(6, "ogg", "libopus", 48000), "upload WAV, MP3 or M4A"),
        (lambda: encode_sample(6, sample_rate=8000), "16 kHz or more"),
        (lambda: encode_sample(6, codec="pcm_u8"), "must be 16-bit PCM"),
        (_png, "not a readable audio file"),
        (lambda: b"", "empty"),
        (lambda: b"\0" * (10 * 1024 * 1024 + 1), "larger than 10 MB"),
    ],
    ids=["short", "long", "opus", "8khz", "8bit", "png", "empty", "huge"],
)
def test_bad_samples_are_refused_with_a_sentence_that_says_why(make: Any, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        inspect_sample(make())
    assert says in raised.value.messages[0]


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_never_crash(data: bytes) -> None:
    with pytest.raises(ValidationError):
        inspect_sample(data)


@pytest.fixture
def boss(client: Client, db: None) -> Client:
    get_user_model().objects.create_superuser("boss", "boss@example.com", "correct horse battery")
    assert client.login(username="boss", password="correct horse battery")
    return client


def form_data(avatar: Avatar, **changes: Any) -> dict[str, Any]:
    data = {
        "name": avatar.name,
        "slug": avatar.slug,
        "enabled": "on",
        "language": avatar.language,
        "persona": avatar.persona,
        "greeting": avatar.greeting,
        "voice": avatar.voice,
        "voice_source": avatar.voice_source,
        "espeak_voice": avatar.espeak_voice,
        "espeak_pitch": "" if avatar.espeak_pitch is None else avatar.espeak_pitch,
        "espeak_rate": "" if avatar.espeak_rate is None else avatar.espeak_rate,
        "mouth_x": avatar.mouth_x,
        "mouth_y": avatar.mouth_y,
    }
    data.update(changes)
    return data


def upload(data: bytes, name: str) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def test_admin_refuses_a_bad_sample_and_stores_nothing(
    boss: Client, avatars: list[Avatar], media_root: Path
) -> None:
    aria = avatars[0]
    response = boss.post(
        f"/admin/avatars/avatar/{aria.pk}/change/",
        form_data(aria, voice_sample=upload(encode_sample(2), "me.wav")),
    )
    assert response.status_code == 200
    assert "record at least 5 seconds" in response.content.decode()
    aria.refresh_from_db()
    assert not aria.voice_sample and aria.voice_state == VoiceState.NONE
    assert not (media_root / "voices").exists() or not any((media_root / "voices").iterdir())


def test_admin_stores_a_good_sample_and_shows_it_enrolling(
    boss: Client, avatars: list[Avatar], media_root: Path
) -> None:
    aria = avatars[0]
    response = boss.post(
        f"/admin/avatars/avatar/{aria.pk}/change/",
        form_data(
            aria,
            voice_source=VoiceSource.CLONED,
            voice_sample=upload(encode_sample(8, "mp3", "libmp3lame"), "me.mp3"),
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    aria.refresh_from_db()
    assert aria.voice_sample.name.startswith("voices/") and aria.voice_sample.name.endswith(".mp3")
    assert "me" not in aria.voice_sample.name[len("voices/") :]  # unguessable, not the upload's
    assert (media_root / aria.voice_sample.name).is_file()
    assert aria.voice_state == VoiceState.ENROLLING and not aria.cloned_voice_ready()
    page = boss.get(f"/admin/avatars/avatar/{aria.pk}/change/").content.decode()
    assert 'data-state="enrolling"' in page and "DashScope is cloning the voice" in page


def test_choosing_a_cloned_voice_needs_a_sample(boss: Client, avatars: list[Avatar]) -> None:
    aria = avatars[0]
    response = boss.post(
        f"/admin/avatars/avatar/{aria.pk}/change/", form_data(aria, voice_source="cloned")
    )
    assert response.status_code == 200
    assert "Upload a voice sample to use a cloned voice." in response.content.decode()


def test_presets_are_listed_with_their_languages_and_espeak_settings_are_checked(
    boss: Client, avatars: list[Avatar]
) -> None:
    aria = avatars[0]
    page = boss.get(f"/admin/avatars/avatar/{aria.pk}/change/").content.decode()
    assert "longxiaochun_v2 — " in page and "(Chinese, English)" in page
    assert 'class="button voice-preview"' in page

    refused = boss.post(
        f"/admin/avatars/avatar/{aria.pk}/change/",
        form_data(aria, espeak_voice="klingon+f9", espeak_pitch="120"),
    )
    assert refused.status_code == 200
    body = refused.content.decode()
    assert "espeak-ng knows no voice" in body
    assert "less than or equal to 99" in body

    chinese_only = boss.post(
        f"/admin/avatars/avatar/{aria.pk}/change/", form_data(aria, voice="longwan_v2")
    )
    assert chinese_only.status_code == 200
    assert "longwan_v2 does not speak English" in chinese_only.content.decode()

    saved = boss.post(
        f"/admin/avatars/avatar/{aria.pk}/change/",
        form_data(aria, voice="longjielidou_v2", espeak_voice="en-us+f3", espeak_pitch="70"),
    )
    assert saved.status_code == 302
    aria.refresh_from_db()
    assert (aria.voice, aria.espeak_voice, aria.espeak_pitch) == ("longjielidou_v2", "en-us+f3", 70)


@pytest.mark.usefixtures("offline_providers")
def test_admin_says_the_offline_recogniser_only_understands_english(
    boss: Client, avatars: list[Avatar], settings: Any
) -> None:
    aria, lin = (next(a for a in avatars if a.slug == s) for s in ("aria", "lin"))
    warning = "understands English only"
    assert warning in boss.get(f"/admin/avatars/avatar/{lin.pk}/change/").content.decode()
    assert warning not in boss.get(f"/admin/avatars/avatar/{aria.pk}/change/").content.decode()
    settings.ASR_BACKEND = "dashscope"
    assert warning not in boss.get(f"/admin/avatars/avatar/{lin.pk}/change/").content.decode()


@pytest.mark.usefixtures("offline_providers")
def test_admin_says_a_cloned_voice_is_unused_by_the_offline_engine(
    boss: Client, avatars: list[Avatar], settings: Any
) -> None:
    Avatar.objects.filter(slug="lin").update(
        voice_source=VoiceSource.CLONED,
        voice_sample="voices/x.wav",
        cloned_voice="cosyvoice-v2-lin-abc",
        cloned_voice_model="cosyvoice-v2",
        voice_state=VoiceState.READY,
    )
    aria, lin = (Avatar.objects.get(slug=s) for s in ("aria", "lin"))
    note = "cloned voice is unused: TTS_BACKEND=espeak"
    assert note in boss.get(f"/admin/avatars/avatar/{lin.pk}/change/").content.decode()
    assert note not in boss.get(f"/admin/avatars/avatar/{aria.pk}/change/").content.decode()
    listed = boss.get("/admin/avatars/avatar/").content.decode()
    assert listed.count("unused: TTS_BACKEND=espeak") == 1  # lin's row only
    settings.TTS_BACKEND = "dashscope"
    assert "unused" not in boss.get(f"/admin/avatars/avatar/{lin.pk}/change/").content.decode()
    assert "unused" not in boss.get("/admin/avatars/avatar/").content.decode()


def preview(client: Client, avatar: Avatar) -> Any:
    return client.get(f"/admin/avatars/avatar/{avatar.pk}/preview-voice/")


@pytest.mark.usefixtures("offline_providers")
def test_preview_speaks_the_greeting_as_wav_with_the_offline_engine(
    boss: Client, avatars: list[Avatar]
) -> None:
    aria = avatars[0]
    response = preview(boss, aria)
    assert response.status_code == 200 and response["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    assert seconds > len(aria.greeting.split()) * 60 / 175 / 2  # the whole greeting


def test_preview_speaks_a_ready_cloned_voice_at_dashscope(
    boss: Client, avatars: list[Avatar], dashscope: Any
) -> None:
    from chat.providers.tts.enrollment import CosyVoiceEnrollment

    dashscope.forget_voices()
    voice_id = CosyVoiceEnrollment.from_settings().create("https://x.test/a.wav", "aria")
    aria = avatars[0]
    Avatar.objects.filter(pk=aria.pk).update(
        voice_source=VoiceSource.CLONED,
        cloned_voice=voice_id,
        cloned_voice_model="cosyvoice-v2",
        voice_state=VoiceState.READY,
    )
    response = preview(boss, aria)
    assert response.status_code == 200 and len(response.content) > 44
    (task,) = dashscope.of("tts")
    assert task.payload["parameters"]["voice"] == voice_id
    assert task.texts == [aria.greeting]
    dashscope.forget_voices()


def test_preview_of_a_cloned_voice_deleted_at_dashscope_says_the_preset_speaks(
    boss: Client, avatars: list[Avatar], dashscope: Any
) -> None:
    from urllib.parse import unquote

    from chat.providers.tts.enrollment import CosyVoiceEnrollment

    dashscope.forget_voices()
    enrollment = CosyVoiceEnrollment.from_settings()
    voice_id = enrollment.create("https://x.test/a.wav", "aria")
    aria = avatars[0]
    Avatar.objects.filter(pk=aria.pk).update(
        voice="longjielidou_v2",
        voice_source=VoiceSource.CLONED,
        cloned_voice=voice_id,
        cloned_voice_model="cosyvoice-v2",
        voice_state=VoiceState.READY,
    )
    enrollment.delete(voice_id)  # someone deleted it in DashScope's console
    for _ in range(2):  # also right after: turns would not even try it for a while
        before = dashscope.of("tts")
        response = preview(boss, aria)
        assert response.status_code == 200 and len(response.content) > 44
        note = unquote(response["X-Voice-Note"])
        assert note.startswith("the cloned voice cannot speak (voice not found: ")
        assert note.endswith("): this is the preset")
        tasks = sorted(
            (t for t in dashscope.of("tts") if t not in before), key=lambda t: t.started_at or 0
        )
        assert [t.payload["parameters"]["voice"] for t in tasks] == [voice_id, "longjielidou_v2"]
    dashscope.forget_voices()


@pytest.mark.usefixtures("offline_providers")
def test_preview_of_a_ready_cloned_voice_offline_keeps_the_espeak_settings(
    boss: Client, avatars: list[Avatar]
) -> None:
    aria = avatars[0]
    Avatar.objects.filter(pk=aria.pk).update(
        voice_source=VoiceSource.CLONED,
        cloned_voice="cosyvoice-v2-aria-0123",
        cloned_voice_model="cosyvoice-v2",
        voice_state=VoiceState.READY,
    )
    url = f"/admin/avatars/avatar/{aria.pk}/preview-voice/"

    def seconds(rate: str) -> float:
        response = boss.get(url, {"espeak_rate": rate})
        assert response.status_code == 200 and "X-Voice-Note" not in response
        with wave.open(io.BytesIO(response.content)) as wav:
            return wav.getnframes() / wav.getframerate()

    assert seconds("100") > 2 * seconds("350")


def test_a_failing_preview_answers_a_short_error_without_the_key(
    boss: Client, avatars: list[Avatar], dashscope: Any
) -> None:
    from tests.fakes.dashscope_server import Fault

    dashscope.behaviour.tts_fault = Fault("task-failed", code="InternalError", message="boom")
    response = preview(boss, avatars[0])
    assert response.status_code == 502
    body = response.json()
    assert body["code"] == "ERR_TTS_FAILED" and "DashScope TTS failed" in body["error"]
    assert dashscope.api_key not in response.content.decode()


def test_preview_needs_an_admin(client: Client, avatars: list[Avatar]) -> None:
    response = preview(client, avatars[0])
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.usefixtures("offline_providers")
def test_preview_speaks_the_forms_unsaved_choice(boss: Client, avatars: list[Avatar]) -> None:
    aria = avatars[0]
    url = f"/admin/avatars/avatar/{aria.pk}/preview-voice/"
    text = "One two three four five six seven eight nine ten."

    def seconds(**params: str) -> float:
        response = boss.get(url, {"greeting": text, **params})
        assert response.status_code == 200, response.content[:200]
        with wave.open(io.BytesIO(response.content)) as wav:
            return wav.getnframes() / wav.getframerate()

    assert seconds(espeak_rate="100") > 2 * seconds(espeak_rate="350")
    for params, says in [
        ({"espeak_pitch": "500"}, "from 0 to 99"),
        ({"espeak_rate": "fast"}, "from 80 to 450"),
        ({"espeak_voice": "klingon"}, "knows no voice"),
        ({"voice": "<script>"}, "letters, digits"),
        ({"language": "fr-FR"}, "unknown language"),
        ({"voice_source": "stolen"}, "unknown voice source"),
    ]:
        response = boss.get(url, params)
        assert response.status_code == 400 and says in response.json()["error"], params


@pytest.mark.usefixtures("offline_providers")
def test_preview_of_a_cloned_voice_not_ready_says_the_preset_speaks(
    boss: Client, avatars: list[Avatar]
) -> None:
    aria = avatars[0]
    response = preview(boss, aria)
    assert "X-Voice-Note" not in response
    response = boss.get(
        f"/admin/avatars/avatar/{aria.pk}/preview-voice/", {"voice_source": "cloned"}
    )
    assert response.status_code == 200
    assert response["X-Voice-Note"] == "the cloned voice is not ready: this is the preset"


def test_the_voice_state_is_served_for_the_page_to_follow(
    boss: Client, avatars: list[Avatar]
) -> None:
    aria = avatars[0]
    url = f"/admin/avatars/avatar/{aria.pk}/voice-state/"
    assert boss.get(url).json()["label"] == "No sample"
    Avatar.objects.filter(pk=aria.pk).update(
        voice_sample="voices/me.wav", voice_state=VoiceState.FAILED, voice_message="too noisy"
    )
    assert boss.get(url).json() == {"state": "failed", "label": "Failed", "details": "too noisy"}


def test_the_avatar_list_shows_each_voice(boss: Client, avatars: list[Avatar]) -> None:
    Avatar.objects.filter(slug="lin").update(
        voice_source=VoiceSource.CLONED, voice_sample="voices/x.wav", voice_state=VoiceState.READY
    )
    page = boss.get("/admin/avatars/avatar/").content.decode()
    assert "cloned (ready), else longxiaochun_v2" in page
    # each avatar with that preset shows it once, the cloned one as its fallback
    assert page.count("longxiaochun_v2") == Avatar.objects.filter(voice="longxiaochun_v2").count()
