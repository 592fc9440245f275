"""Cloned voices through the real DashScope SDK against the loopback server's customization
endpoint: create, query, list, update, delete, and the failures an operator meets."""

from __future__ import annotations

import time
from typing import Any

import pytest

from chat.providers.tts.enrollment import (
    CosyVoiceEnrollment,
    VoiceEnrollmentError,
    VoiceNotFound,
    voice_prefix,
)
from tests.fakes.dashscope_server import DashScopeServer, Fault

SAMPLE_URL = "https://media.example.test/voices/aria.wav"


@pytest.fixture
def enrollment(dashscope: DashScopeServer) -> Any:
    dashscope.forget_voices()
    yield CosyVoiceEnrollment.from_settings()
    dashscope.forget_voices()


def wait_for_status(enrollment: CosyVoiceEnrollment, voice_id: str, wanted: str) -> Any:
    deadline = time.monotonic() + 10
    while True:
        info = enrollment.query(voice_id)
        if info.status == wanted or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def test_a_created_voice_is_deploying_then_ready_and_listed(
    dashscope: DashScopeServer, enrollment: CosyVoiceEnrollment
) -> None:
    dashscope.behaviour.voice_ready_after = 0.5
    voice_id = enrollment.create(SAMPLE_URL, "Aria-2", "en-US")

    assert enrollment.query(voice_id).status == "DEPLOYING"
    assert not enrollment.query(voice_id).ready
    info = wait_for_status(enrollment, voice_id, "OK")
    assert info.ready and info.target_model == "cosyvoice-v2"

    listed = enrollment.list(prefix="aria2")
    assert [v.voice_id for v in listed] == [voice_id]
    assert listed[0].status == "OK"
    create = dashscope.of("voice")[0]
    assert create.authorization == f"Bearer {dashscope.api_key}"
    assert create.payload["model"] == "voice-enrollment"
    assert create.payload["input"] == {
        "action": "create_voice",
        "target_model": "cosyvoice-v2",
        "prefix": "aria2",
        "url": SAMPLE_URL,
        "language_hints": ["en"],
    }


def test_listing_pages_through_every_voice(
    dashscope: DashScopeServer, enrollment: CosyVoiceEnrollment
) -> None:
    made = {enrollment.create(SAMPLE_URL, f"v{i}") for i in range(5)}
    assert {v.voice_id for v in enrollment.list(page_size=2)} == made
    assert len([r for r in dashscope.of("voice") if r.actions == ["list_voice"]]) == 3


def test_a_deleted_voice_is_gone_and_deleting_it_again_is_harmless(
    dashscope: DashScopeServer, enrollment: CosyVoiceEnrollment
) -> None:
    voice_id = enrollment.create(SAMPLE_URL, "aria")
    assert enrollment.delete(voice_id) is True
    assert dashscope.deleted_voices == [voice_id]
    with pytest.raises(VoiceNotFound) as raised:
        enrollment.query(voice_id)
    assert "voice not found" in raised.value.provider_message
    assert enrollment.delete(voice_id) is False
    assert enrollment.list() == []


def test_a_refused_sample_ends_undeployed_with_the_service_message(
    dashscope: DashScopeServer, enrollment: CosyVoiceEnrollment
) -> None:
    dashscope.behaviour.voice_rejection = "no continuous speech of 5 s found"
    voice_id = enrollment.create(SAMPLE_URL, "aria")
    info = wait_for_status(enrollment, voice_id, "UNDEPLOYED")
    assert info.status == "UNDEPLOYED" and not info.ready
    assert info.message == "no continuous speech of 5 s found"


def test_updating_a_voice_enrols_the_new_sample_under_the_same_id(
    dashscope: DashScopeServer, enrollment: CosyVoiceEnrollment
) -> None:
    voice_id = enrollment.create(SAMPLE_URL, "aria")
    dashscope.behaviour.voice_ready_after = 30
    enrollment.update(voice_id, SAMPLE_URL.replace("aria", "aria-new"))
    assert enrollment.query(voice_id).status == "DEPLOYING"
    assert dashscope.voices[voice_id].url.endswith("aria-new.wav")


def test_a_sample_url_the_service_cannot_fetch_is_refused_permanently(
    enrollment: CosyVoiceEnrollment,
) -> None:
    with pytest.raises(VoiceEnrollmentError) as raised:
        enrollment.create("/media/voices/aria.wav", "aria")
    assert not raised.value.retryable
    assert "public http(s) URL" in raised.value.provider_message


def test_a_service_error_is_retryable_and_a_rejected_key_is_not_leaked(
    dashscope: DashScopeServer, enrollment: CosyVoiceEnrollment, settings: Any
) -> None:
    dashscope.behaviour.voice_fault = Fault("http", 503, "ServiceUnavailable", "try later")
    with pytest.raises(VoiceEnrollmentError) as raised:
        enrollment.create(SAMPLE_URL, "aria")
    assert raised.value.retryable and "try later" in raised.value.provider_message

    dashscope.behaviour.voice_fault = None
    settings.DASHSCOPE_API_KEY = "sk-wrong-key-0123456789"
    with pytest.raises(VoiceEnrollmentError) as raised:
        CosyVoiceEnrollment.from_settings().create(SAMPLE_URL, "aria")
    assert not raised.value.retryable
    assert "sk-wrong-key-0123456789" not in raised.value.provider_message + raised.value.message


@pytest.mark.parametrize(
    ("name", "prefix"), [("aria", "aria"), ("Mr-Chen_2024!", "mrchen202"), ("---", "avatar")]
)
def test_voice_prefixes_follow_the_services_rule(name: str, prefix: str) -> None:
    assert voice_prefix(name) == prefix
