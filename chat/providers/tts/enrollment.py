"""Cloned CosyVoice voices: enrolment at DashScope through the SDK's `VoiceEnrollmentService`.

The service clones a voice from a recording it fetches by URL (`create_voice`), reports it
DEPLOYING until it can speak, then OK (or UNDEPLOYED when it refused the sample), and deletes it
on request. Calls are blocking (the SDK uses `requests`): Celery tasks and `check_providers`
call them, never the event loop. Every failure becomes a `VoiceEnrollmentError` with the
service's own words and a retryable flag; an unknown voice id is `VoiceNotFound`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.conf import settings

from chat.providers.base import TTSError
from chat.providers.cloud import configure_dashscope, failure

WHAT = "DashScope voice enrolment"
ENROLMENT_MODEL = "voice-enrollment"
_PREFIX_CHARS = re.compile(r"[^a-z0-9]")


class VoiceStatus(StrEnum):
    """Where a cloned voice stands, in the service's words."""

    DEPLOYING = "DEPLOYING"  # enrolled, not yet usable
    OK = "OK"  # usable by SpeechSynthesizer
    UNDEPLOYED = "UNDEPLOYED"  # refused (the sample) or taken down


class VoiceEnrollmentError(TTSError):
    """A customization call failed; `provider_message` holds what the service said."""


class VoiceNotFound(VoiceEnrollmentError):
    """The service knows no voice with this id (deleted, or never created by this account)."""


@dataclass(frozen=True)
class ClonedVoiceInfo:
    voice_id: str
    status: str
    target_model: str = ""
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.status == VoiceStatus.OK


def voice_prefix(name: str) -> str:
    """The service's prefix for a new voice (digits and lowercase letters, under 10): from an
    avatar's slug, so an operator recognises the avatar's voices in the service's list."""
    return (_PREFIX_CHARS.sub("", name.lower()) or "avatar")[:9]


def _is_missing(status: int | None, code: str | None) -> bool:
    lowered = str(code or "").lower()
    return status == 404 or "notfound" in lowered or "notexist" in lowered


class CosyVoiceEnrollment:
    """Create, query, list, update and delete cloned voices for one target TTS model."""

    def __init__(self, target_model: str, timeout_s: float) -> None:
        self.target_model = target_model
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls) -> CosyVoiceEnrollment:
        return cls(settings.DASHSCOPE_TTS_MODEL, settings.PROVIDER_TIMEOUT_S)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import requests
        from dashscope.audio.tts_v2 import VoiceEnrollmentService
        from dashscope.audio.tts_v2.enrollment import VoiceEnrollmentException

        key = configure_dashscope()
        service = VoiceEnrollmentService(
            api_key=key, model=ENROLMENT_MODEL, request_timeout=max(1, round(self.timeout_s))
        )
        try:
            return getattr(service, method)(*args, **kwargs)
        except VoiceEnrollmentException as exc:
            status, code = exc._status_code, exc._code
            kind = VoiceNotFound if _is_missing(status, code) else VoiceEnrollmentError
            raise failure(
                kind, WHAT, status=status, code=code, message=exc._error_message, secrets=(key,)
            ) from None
        except UnboundLocalError:
            # The SDK retries refused and timed-out connections three times, then fails on its
            # own unset `response`: the service was unreachable.
            unreachable = ConnectionError("the service could not be reached")
            raise failure(VoiceEnrollmentError, WHAT, exc=unreachable, secrets=(key,)) from None
        except (requests.RequestException, OSError) as exc:
            raise failure(VoiceEnrollmentError, WHAT, exc=exc, secrets=(key,)) from None

    def create(self, url: str, prefix: str, language: str = "") -> str:
        """Enrol the recording at `url` (public or presigned); returns the new voice id."""
        hints = [language.split("-")[0].lower()] if language else None
        return str(
            self._call(
                "create_voice",
                target_model=self.target_model,
                prefix=voice_prefix(prefix),
                url=url,
                language_hints=hints,
            )
        )

    def query(self, voice_id: str) -> ClonedVoiceInfo:
        output = self._call("query_voice", voice_id) or {}
        return ClonedVoiceInfo(
            voice_id=voice_id,
            status=str(output.get("status", "")),
            target_model=str(output.get("target_model", "")),
            message=str(output.get("message", "") or ""),
        )

    def list(self, prefix: str | None = None, page_size: int = 100) -> list[ClonedVoiceInfo]:
        """Every voice of the account (or with this prefix), page by page."""
        found: list[ClonedVoiceInfo] = []
        page = 0
        while True:
            listed = self._call("list_voices", prefix=prefix, page_index=page, page_size=page_size)
            found += [
                ClonedVoiceInfo(voice_id=str(v.get("voice_id", "")), status=str(v.get("status")))
                for v in listed or []
            ]
            if len(listed or []) < page_size:
                return found
            page += 1

    def update(self, voice_id: str, url: str) -> None:
        """Enrol a new recording under the same voice id (DEPLOYING again until it is done)."""
        self._call("update_voice", voice_id, url)

    def delete(self, voice_id: str) -> bool:
        """Delete the voice; False when the service had no such voice (already deleted)."""
        try:
            self._call("delete_voice", voice_id)
        except VoiceNotFound:
            return False
        return True
