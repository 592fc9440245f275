"""Cloned voices end to end: a real Celery worker enrols samples at the loopback DashScope
through the real SDK, waits for them, and deletes them when samples or avatars go away."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile

from avatars.models import Avatar, PendingVoiceDeletion, VoiceSource, VoiceState
from tests.fakes.dashscope_server import DashScopeServer, Fault
from tests.procs import Proc, child_env, start_celery_worker
from tests.voice_samples import encode_sample

QUEUE = "voices-test"
MEDIA_BASE = "http://media.example.test"


@pytest.fixture(scope="module")
def voice_worker(
    django_db_setup: None, django_db_blocker: object, log_dir: Path, dashscope_server: Any
) -> Iterator[Proc]:
    """A worker on a queue of its own, its DashScope the loopback one, polling every 0.2 s."""
    env = child_env(
        DASHSCOPE_API_KEY=dashscope_server.api_key,
        DASHSCOPE_HTTP_BASE_URL=dashscope_server.http_base_url,
        DASHSCOPE_WEBSOCKET_BASE_URL=dashscope_server.websocket_url,
        VOICE_QUEUE=QUEUE,
        VOICE_POLL_S="0.2",
        PUBLIC_BASE_URL=MEDIA_BASE,
        PROVIDER_TIMEOUT_S="5",
    )
    proc = start_celery_worker(log_dir, QUEUE, "voice-worker", env=env, concurrency=1)
    yield proc
    proc.stop()


@pytest.fixture
def cloud(
    voice_worker: Proc, dashscope: DashScopeServer, live_avatars: list[Avatar], settings: Any
) -> Iterator[DashScopeServer]:
    settings.VOICE_QUEUE = QUEUE
    dashscope.forget_voices()
    yield dashscope
    dashscope.forget_voices()


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)
    return result


def give_sample(avatar: Avatar, seconds: float = 7, name: str = "me.wav") -> Avatar:
    avatar.voice_source = VoiceSource.CLONED
    avatar.voice_sample.save(name, ContentFile(encode_sample(seconds)), save=True)
    return avatar


def state_of(avatar: Avatar, wanted: str) -> Callable[[], Avatar | None]:
    def check() -> Avatar | None:
        fresh = Avatar.objects.get(pk=avatar.pk)
        return fresh if fresh.voice_state == wanted else None

    return check


def test_a_sample_is_enrolled_for_the_configured_model_and_becomes_ready(
    cloud: DashScopeServer, live_avatars: list[Avatar], media_root: Path
) -> None:
    cloud.behaviour.voice_ready_after = 0.8
    aria = give_sample(live_avatars[0])
    assert Avatar.objects.get(pk=aria.pk).voice_state == VoiceState.ENROLLING

    enrolling = eventually(lambda: Avatar.objects.get(pk=aria.pk).cloned_voice, "a voice id")
    ready = eventually(state_of(aria, VoiceState.READY), "the voice ready")
    assert ready.cloned_voice == enrolling and ready.cloned_voice_ready()
    assert ready.cloned_voice_model == "cosyvoice-v2"
    voice = cloud.voices[ready.cloned_voice]
    assert voice.status == "OK" and voice.prefix == "aria"
    assert voice.url == f"{MEDIA_BASE}/media/{ready.voice_sample.name}"
    queries = [r for r in cloud.of("voice") if r.actions == ["query_voice"]]
    assert len(queries) >= 2  # DEPLOYING at first, then OK


def test_a_refused_sample_shows_the_services_message(
    cloud: DashScopeServer, live_avatars: list[Avatar]
) -> None:
    cloud.behaviour.voice_rejection = "the recording holds no continuous speech of 5 s"
    aria = give_sample(live_avatars[0])
    failed = eventually(state_of(aria, VoiceState.FAILED), "the enrolment failed")
    assert failed.voice_message == "the recording holds no continuous speech of 5 s"
    assert not failed.cloned_voice_ready()


def test_a_passing_service_error_is_retried_until_the_voice_is_made(
    cloud: DashScopeServer, live_avatars: list[Avatar]
) -> None:
    cloud.behaviour.voice_fault = Fault("http", 503, "ServiceUnavailable", "busy")
    aria = give_sample(live_avatars[0])
    eventually(lambda: len(cloud.of("voice")) >= 2, "two refused create calls")
    assert Avatar.objects.get(pk=aria.pk).voice_state == VoiceState.ENROLLING
    cloud.behaviour.voice_fault = None
    eventually(state_of(aria, VoiceState.READY), "the voice ready after the retries")


def test_replacing_the_sample_deletes_the_old_voice_and_enrols_the_new_one(
    cloud: DashScopeServer, live_avatars: list[Avatar], media_root: Path
) -> None:
    aria = give_sample(live_avatars[0])
    first = eventually(state_of(aria, VoiceState.READY), "the first voice")
    old_file = media_root / first.voice_sample.name

    second = give_sample(Avatar.objects.get(pk=aria.pk), seconds=9, name="again.wav")
    eventually(lambda: first.cloned_voice in cloud.deleted_voices, "the old voice deleted")
    now = eventually(state_of(second, VoiceState.READY), "the new voice")
    assert now.cloned_voice != first.cloned_voice and now.cloned_voice in cloud.voices
    assert not old_file.exists()
    eventually(lambda: not PendingVoiceDeletion.objects.exists(), "no deletion left")


def test_clearing_the_sample_or_deleting_the_avatar_deletes_the_voice(
    cloud: DashScopeServer, live_avatars: list[Avatar], media_root: Path
) -> None:
    aria, lin = (next(a for a in live_avatars if a.slug == s) for s in ("aria", "lin"))
    aria_voice = eventually(state_of(give_sample(aria), VoiceState.READY), "aria").cloned_voice
    lin_ready = eventually(state_of(give_sample(lin), VoiceState.READY), "lin")

    aria = Avatar.objects.get(pk=aria.pk)
    aria.voice_sample = None
    aria.save()
    assert Avatar.objects.get(pk=aria.pk).voice_state == VoiceState.NONE
    lin_ready.delete()
    eventually(
        lambda: {aria_voice, lin_ready.cloned_voice} <= set(cloud.deleted_voices),
        "both voices deleted at DashScope",
    )
    assert cloud.voices == {}
    assert not (media_root / lin_ready.voice_sample.name).exists()


def test_a_failed_delete_is_kept_and_retried_until_the_service_confirms(
    cloud: DashScopeServer, live_avatars: list[Avatar]
) -> None:
    ready = eventually(state_of(give_sample(live_avatars[0]), VoiceState.READY), "the voice")
    cloud.behaviour.voice_fault = Fault("http", 500, "InternalError", "storage hiccup")
    ready.delete()
    pending = eventually(
        lambda: PendingVoiceDeletion.objects.filter(
            voice_id=ready.cloned_voice, attempts__gte=2
        ).first(),
        "two failed attempts recorded",
    )
    assert "storage hiccup" in pending.last_error
    assert ready.cloned_voice in cloud.voices
    cloud.behaviour.voice_fault = None
    eventually(lambda: ready.cloned_voice in cloud.deleted_voices, "deleted at last")
    eventually(lambda: not PendingVoiceDeletion.objects.exists(), "the record gone")


def test_the_sweep_sends_again_a_deletion_whose_task_was_lost(cloud: DashScopeServer) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from avatars.tasks import sweep_voices
    from chat.providers.tts.enrollment import CosyVoiceEnrollment

    voice_id = CosyVoiceEnrollment.from_settings().create(f"{MEDIA_BASE}/a.wav", "lost")
    fresh = CosyVoiceEnrollment.from_settings().create(f"{MEDIA_BASE}/b.wav", "fresh")
    PendingVoiceDeletion.objects.create(voice_id=voice_id)
    PendingVoiceDeletion.objects.create(voice_id=fresh)  # a task is on it: not sent again
    old = timezone.now() - timedelta(minutes=10)
    PendingVoiceDeletion.objects.filter(voice_id=voice_id).update(updated_at=old)
    assert sweep_voices() == {"deletions": 1, "enrolments": 0, "gone": 0}
    eventually(lambda: voice_id in cloud.deleted_voices, "the lost deletion done")
    eventually(
        lambda: list(PendingVoiceDeletion.objects.values_list("voice_id", flat=True)) == [fresh],
        "only the recent one left",
    )
    assert fresh in cloud.voices


def test_the_sweep_resumes_an_enrolment_whose_task_was_lost(
    cloud: DashScopeServer, live_avatars: list[Avatar], media_root: Path, settings: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from avatars.tasks import sweep_voices

    aria = live_avatars[0]
    name = aria.voice_sample.storage.save("voices/lost.wav", ContentFile(encode_sample(6)))
    long_ago = timezone.now() - timedelta(seconds=settings.VOICE_READY_TIMEOUT_S + 3600)
    # as a worker that died with the enrolment would leave it: no signal, no task
    Avatar.objects.filter(pk=aria.pk).update(
        voice_source=VoiceSource.CLONED,
        voice_sample=name,
        voice_state=VoiceState.ENROLLING,
        updated_at=long_ago,
    )
    assert sweep_voices() == {"deletions": 0, "enrolments": 1, "gone": 0}
    eventually(state_of(aria, VoiceState.READY), "the resumed enrolment ready")
    assert sweep_voices() == {"deletions": 0, "enrolments": 0, "gone": 0}


def test_an_enrolment_the_service_refuses_fails_with_its_words_and_without_the_key(
    cloud: DashScopeServer, live_avatars: list[Avatar], settings: Any
) -> None:
    from avatars.tasks import enrol_voice

    aria = live_avatars[0]
    name = aria.voice_sample.storage.save("voices/here.wav", ContentFile(encode_sample(6)))
    Avatar.objects.filter(pk=aria.pk).update(voice_sample=name, voice_state=VoiceState.ENROLLING)

    settings.PUBLIC_BASE_URL = ""  # site-relative media URLs: nothing DashScope can fetch
    enrol_voice.apply((aria.pk, name))  # here, in this process, with its settings
    failed = Avatar.objects.get(pk=aria.pk)
    assert failed.voice_state == VoiceState.FAILED
    assert "set PUBLIC_BASE_URL" in failed.voice_message
    assert cloud.of("voice") == []

    settings.PUBLIC_BASE_URL = MEDIA_BASE
    settings.DASHSCOPE_API_KEY = wrong = "sk-wrong-voice-key-0123456789"
    enrol_voice.apply((aria.pk, name))
    failed = Avatar.objects.get(pk=aria.pk)
    assert failed.voice_state == VoiceState.FAILED
    assert "Invalid API-key" in failed.voice_message and wrong not in failed.voice_message


def test_the_admin_action_clones_a_failed_voice_again(
    cloud: DashScopeServer, live_avatars: list[Avatar], client: Any
) -> None:
    from django.contrib.auth import get_user_model

    cloud.behaviour.voice_rejection = "too noisy"
    aria, lin = (next(a for a in live_avatars if a.slug == s) for s in ("aria", "lin"))
    failed = eventually(state_of(give_sample(aria), VoiceState.FAILED), "the first try failed")
    cloud.behaviour.voice_rejection = None
    get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-0123456789")
    assert client.login(username="boss", password="pw-0123456789")
    response = client.post(
        "/admin/avatars/avatar/",
        {"action": "enrol_voices_again", "_selected_action": [aria.pk, lin.pk]},
        follow=True,
    )
    assert "Enrolling 1 voice(s) again; 1 avatar(s) have no sample." in response.content.decode()
    ready = eventually(state_of(aria, VoiceState.READY), "the second try ready")
    assert ready.cloned_voice != failed.cloned_voice
    eventually(lambda: failed.cloned_voice in cloud.deleted_voices, "the failed voice deleted")


def test_on_s3_dashscope_fetches_the_sample_through_a_presigned_url(
    dashscope: DashScopeServer, avatars: list[Avatar], settings: Any
) -> None:
    """Media on S3/OSS (moto's S3 server here), no PUBLIC_BASE_URL: the sample's URL handed to
    DashScope is presigned, and it fetches the very sample (the same rule as uploads)."""
    import urllib.request

    import boto3
    from moto.server import ThreadedMotoServer

    from avatars.tasks import enrol_voice
    from celery_app import app
    from tests.procs import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).create_bucket(
        Bucket="echo-voices"
    )
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "chat.s3.PublicS3Storage",
            "OPTIONS": {
                "bucket_name": "echo-voices",
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
                "access_key": "test",
                "secret_key": "test",
                "addressing_style": "path",
                "signature_version": "s3v4",
                "querystring_auth": True,
                "default_acl": None,
            },
        },
    }
    settings.PUBLIC_BASE_URL = ""
    dashscope.forget_voices()
    sample = encode_sample(6)
    aria = avatars[0]
    name = aria.voice_sample.storage.save("voices/on-s3.wav", ContentFile(sample))
    Avatar.objects.filter(pk=aria.pk).update(voice_sample=name, voice_state=VoiceState.ENROLLING)
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True  # the readiness check too, here
    try:
        enrol_voice.apply((aria.pk, name))
        ready = Avatar.objects.get(pk=aria.pk)
        assert ready.voice_state == VoiceState.READY, ready.voice_message
        url = dashscope.voices[ready.cloned_voice].url
        assert url.startswith(f"{endpoint}/echo-voices/voices/") and "X-Amz-Signature=" in url
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == sample
    finally:
        app.conf.task_always_eager = eager
        server.stop()
        dashscope.forget_voices()


def test_a_voice_still_deploying_after_the_timeout_fails_and_the_admin_says_why(
    dashscope: DashScopeServer, avatars: list[Avatar], settings: Any, admin_client: Any
) -> None:
    from avatars.tasks import check_voice
    from chat.providers.tts.enrollment import CosyVoiceEnrollment

    dashscope.forget_voices()
    dashscope.behaviour.voice_ready_after = 3600
    voice_id = CosyVoiceEnrollment.from_settings().create(f"{MEDIA_BASE}/a.wav", "slow")
    aria = avatars[0]
    Avatar.objects.filter(pk=aria.pk).update(
        voice_sample="voices/slow.wav", cloned_voice=voice_id, voice_state=VoiceState.ENROLLING
    )
    settings.VOICE_READY_TIMEOUT_S = 30
    assert check_voice.apply((aria.pk, voice_id, time.time() - 31)).get() == "failed"
    state = admin_client.get(f"/admin/avatars/avatar/{aria.pk}/voice-state/").json()
    assert state == {
        "state": "failed",
        "label": "Failed",
        "details": "The voice was not ready within 30 s.",
    }
    dashscope.forget_voices()


def test_the_sweep_shows_a_ready_voice_deleted_at_dashscope_as_failed(
    dashscope: DashScopeServer, avatars: list[Avatar], admin_client: Any
) -> None:
    from avatars.tasks import sweep_voices
    from avatars.voices import speaking_voice
    from chat.providers.tts.enrollment import CosyVoiceEnrollment

    dashscope.forget_voices()
    enrollment = CosyVoiceEnrollment.from_settings()
    aria, lin = (next(a for a in avatars if a.slug == s) for s in ("aria", "lin"))
    for avatar in (aria, lin):
        Avatar.objects.filter(pk=avatar.pk).update(
            voice_source=VoiceSource.CLONED,
            voice_sample=f"voices/{avatar.slug}.wav",
            cloned_voice=enrollment.create(f"{MEDIA_BASE}/{avatar.slug}.wav", avatar.slug),
            cloned_voice_model="cosyvoice-v2",
            voice_state=VoiceState.READY,
        )
    enrollment.delete(Avatar.objects.get(pk=lin.pk).cloned_voice)  # gone in the console
    assert sweep_voices() == {"deletions": 0, "enrolments": 0, "gone": 1}

    def state(avatar: Avatar) -> dict[str, str]:
        return admin_client.get(f"/admin/avatars/avatar/{avatar.pk}/voice-state/").json()

    assert state(aria)["state"] == "ready"
    assert state(lin) == {
        "state": "failed",
        "label": "Failed",
        "details": "The voice was deleted at DashScope: clone it again from the sample.",
    }
    assert speaking_voice(Avatar.objects.get(pk=lin.pk)).cloned == ""  # the preset at once
    assert sweep_voices()["gone"] == 0  # nothing ready is missing any more
    dashscope.forget_voices()
