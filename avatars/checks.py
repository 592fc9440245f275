"""Are the avatars' cloned voices usable right now? For `manage.py check_providers`.

For every avatar that chose a cloned voice: is one enrolled, does DashScope still have it, is it
ready and made for the configured TTS model, and does it speak a short sentence. A voice that
fails here is one whose turns fall back to the preset.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import DatabaseError

from avatars.models import Avatar, VoiceSource
from chat.providers.base import ProviderError, TTSProvider, Voice
from chat.providers.checks import CheckResult
from chat.providers.cloud import run_once
from chat.providers.registry import backend_name, build
from chat.providers.tts.enrollment import CosyVoiceEnrollment, VoiceNotFound

STAGE = "voice"


def _describe(exc: ProviderError) -> str:
    return f"{exc.code}: {exc.message}" + (
        f" ({exc.provider_message})" if exc.provider_message else ""
    )


def _check_one(
    avatar: Avatar, enrollment: CosyVoiceEnrollment, tts: TTSProvider
) -> tuple[bool, str]:
    if not avatar.cloned_voice:
        state = avatar.get_voice_state_display() if avatar.voice_sample else "no sample"
        message = f" ({avatar.voice_message})" if avatar.voice_message else ""
        return False, f"no cloned voice yet: {state}{message}; the preset speaks"
    voice_id = avatar.cloned_voice
    try:
        info = enrollment.query(voice_id)
    except VoiceNotFound:
        return False, f"{voice_id} was deleted at DashScope; the preset speaks"
    except ProviderError as exc:
        return False, _describe(exc)
    if not info.ready:
        return False, f"{voice_id} is {info.status}; the preset speaks"
    model = info.target_model or avatar.cloned_voice_model
    if model != settings.DASHSCOPE_TTS_MODEL:
        return False, (
            f"{voice_id} was made for {model}, TTS speaks {settings.DASHSCOPE_TTS_MODEL}:"
            " clone it again (admin action) or replace the sample"
        )
    try:
        audio = run_once(tts.synthesize("Hello.", Voice(preset=voice_id), avatar.language))
    except ProviderError as exc:
        return False, _describe(exc)
    seconds = len(audio) / 2 / tts.sample_rate
    return True, f"{voice_id} spoke {seconds:.2f} s of audio"


def check_cloned_voices() -> list[CheckResult]:
    """One result per avatar that chose a cloned voice (none when no avatar did)."""
    try:
        avatars = list(Avatar.objects.filter(voice_source=VoiceSource.CLONED).order_by("slug"))
    except DatabaseError as exc:
        return [CheckResult(STAGE, "avatars", False, 0.0, f"cannot read the avatars: {exc}")]
    if not avatars:
        return []
    if backend_name("tts") != "dashscope":
        detail = f"unused: TTS_BACKEND={backend_name('tts')} speaks with the espeak-ng settings"
        return [CheckResult(STAGE, a.slug, True, 0.0, detail) for a in avatars]
    enrollment = CosyVoiceEnrollment.from_settings()
    tts = build("tts")
    results = []
    try:
        for avatar in avatars:
            started = time.perf_counter()
            ok, detail = _check_one(avatar, enrollment, tts)
            milliseconds = (time.perf_counter() - started) * 1000
            results.append(CheckResult(STAGE, avatar.slug, ok, milliseconds, detail))
    finally:
        tts.close()
    return results
