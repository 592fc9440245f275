"""Celery tasks of cloned voices: enrol a sample, wait until the voice is ready, delete voices.

Tasks take ids and re-read the avatar, so a sample replaced meanwhile is never attached to the
avatar (the voice made from the old one is deleted instead). Enrolment retries passing failures
a few times; the readiness check polls every VOICE_POLL_S until VOICE_READY_TIMEOUT_S; deletion
retries with a growing delay for as long as it takes (its row in PendingVoiceDeletion stays
until the service confirmed). The periodic sweep sends again what a lost task (a worker that
died) left undone: deletions, and enrolments stuck "enrolling"; and it asks after the ready
voices, so that one deleted at DashScope shows as failed instead of "Ready".
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from avatars.models import Avatar, PendingVoiceDeletion, VoiceState
from chat.providers.tts.enrollment import (
    CosyVoiceEnrollment,
    VoiceEnrollmentError,
    VoiceNotFound,
    VoiceStatus,
)
from chat.storage import public_url

log = logging.getLogger(__name__)

ENROL_RETRIES = 5
DELETE_BACKOFF_MAX_S = 600.0
SWEEP_AFTER = timedelta(minutes=5)


def _backoff(retries: int, limit: float) -> float:
    return min(limit, settings.VOICE_POLL_S * 2**retries)


def _set_state(avatar_id: int, sample: str, state: str, message: str = "") -> int:
    """Update the avatar's voice state, only while it still has this sample."""
    return Avatar.objects.filter(pk=avatar_id, voice_sample=sample).update(
        voice_state=state, voice_message=message[:2000]
    )


def _reason(exc: VoiceEnrollmentError) -> str:
    return exc.provider_message or exc.message


@shared_task(bind=True, ignore_result=True, max_retries=ENROL_RETRIES)
def enrol_voice(self: Task, avatar_id: int, sample: str) -> str:
    """Enrol the avatar's sample at DashScope for the configured model, then wait for it."""
    avatar = Avatar.objects.filter(pk=avatar_id, voice_sample=sample).first()
    if avatar is None:
        return "stale"  # deleted, or the sample was replaced: its own enrolment runs
    url = public_url(sample)
    if not url.startswith(("http://", "https://")):
        _set_state(
            avatar_id,
            sample,
            VoiceState.FAILED,
            "DashScope cannot fetch the sample: set PUBLIC_BASE_URL or keep media on S3/OSS.",
        )
        return "failed"
    enrollment = CosyVoiceEnrollment.from_settings()
    try:
        voice_id = enrollment.create(url, avatar.slug, avatar.language)
    except VoiceEnrollmentError as exc:
        if exc.retryable and self.request.retries < ENROL_RETRIES:
            raise self.retry(countdown=_backoff(self.request.retries, 60.0)) from None
        _set_state(avatar_id, sample, VoiceState.FAILED, _reason(exc))
        return "failed"
    attached = Avatar.objects.filter(pk=avatar_id, voice_sample=sample, cloned_voice="").update(
        cloned_voice=voice_id,
        cloned_voice_model=enrollment.target_model,
        voice_state=VoiceState.ENROLLING,
        voice_message="",
    )
    if not attached:  # replaced or deleted while enrolling: the voice belongs to nobody
        from avatars.voices import forget_voice

        forget_voice(voice_id)
        return "stale"
    check_voice.apply_async(
        (avatar_id, voice_id, time.time()),
        countdown=settings.VOICE_POLL_S,
        queue=settings.VOICE_QUEUE,
    )
    return voice_id


@shared_task(bind=True, ignore_result=True, max_retries=None)
def check_voice(self: Task, avatar_id: int, voice_id: str, since: float) -> str:
    """Poll the voice until the service says OK (ready) or UNDEPLOYED (failed)."""
    avatar = Avatar.objects.filter(pk=avatar_id, cloned_voice=voice_id).first()
    if avatar is None:
        return "stale"
    sample = avatar.voice_sample.name
    try:
        info = CosyVoiceEnrollment.from_settings().query(voice_id)
    except VoiceNotFound:
        _set_state(avatar_id, sample, VoiceState.FAILED, "The voice was deleted at DashScope.")
        return "failed"
    except VoiceEnrollmentError as exc:
        if not exc.retryable:
            _set_state(avatar_id, sample, VoiceState.FAILED, _reason(exc))
            return "failed"
        info = None
    if info is not None and info.status == VoiceStatus.OK:
        _set_state(avatar_id, sample, VoiceState.READY)
        return "ready"
    if info is not None and info.status == VoiceStatus.UNDEPLOYED:
        message = info.message or "DashScope refused the sample (status UNDEPLOYED)."
        _set_state(avatar_id, sample, VoiceState.FAILED, message)
        return "failed"
    if time.time() - since > settings.VOICE_READY_TIMEOUT_S:
        _set_state(
            avatar_id,
            sample,
            VoiceState.FAILED,
            f"The voice was not ready within {settings.VOICE_READY_TIMEOUT_S:g} s.",
        )
        return "failed"
    raise self.retry(countdown=settings.VOICE_POLL_S)


@shared_task(bind=True, ignore_result=True, acks_late=True, max_retries=None)
def delete_cloned_voice(self: Task, voice_id: str) -> str:
    """Delete the voice at DashScope; an absent voice counts as deleted. Idempotent."""
    try:
        existed = CosyVoiceEnrollment.from_settings().delete(voice_id)
    except VoiceEnrollmentError as exc:
        pending, _ = PendingVoiceDeletion.objects.get_or_create(voice_id=voice_id)
        pending.attempts += 1
        pending.last_error = _reason(exc)[:2000]
        pending.save(update_fields=["attempts", "last_error", "updated_at"])
        log.warning("deleting cloned voice %s failed (try %d)", voice_id, pending.attempts)
        raise self.retry(countdown=_backoff(self.request.retries, DELETE_BACKOFF_MAX_S)) from None
    PendingVoiceDeletion.objects.filter(voice_id=voice_id).delete()
    return "deleted" if existed else "absent"


def _recheck_ready_voices() -> int:
    """Ready voices the service no longer has (deleted in its console, or taken down) become
    failed, so the admin stops saying "Ready" and turns go straight to the preset; how many."""
    ready = Avatar.objects.filter(voice_state=VoiceState.READY).exclude(cloned_voice="")
    ready = list(ready.values_list("pk", "cloned_voice"))
    if not ready:
        return 0
    enrollment, gone = CosyVoiceEnrollment.from_settings(), 0
    for avatar_id, voice_id in ready:
        try:
            info = enrollment.query(voice_id)
        except VoiceNotFound:
            message = "The voice was deleted at DashScope: clone it again from the sample."
        except VoiceEnrollmentError:
            break  # the service is unwell or unreachable: the next sweep asks again
        else:
            if info.status != VoiceStatus.UNDEPLOYED:
                continue
            message = info.message or "DashScope took the voice down (status UNDEPLOYED)."
        gone += Avatar.objects.filter(
            pk=avatar_id, cloned_voice=voice_id, voice_state=VoiceState.READY
        ).update(voice_state=VoiceState.FAILED, voice_message=message)
        log.warning("avatar %s: its cloned voice %s is gone: %s", avatar_id, voice_id, message)
    return gone


@shared_task(ignore_result=True)
def sweep_voices() -> dict[str, int]:
    """Periodic (beat): send again what a lost task left undone: deletions no task touched for
    a while, and enrolments still "enrolling" long after their last step should have ended;
    and mark failed the ready voices that DashScope no longer has."""
    now = timezone.now()
    due = PendingVoiceDeletion.objects.filter(updated_at__lt=now - SWEEP_AFTER)
    voice_ids = list(due.values_list("voice_id", flat=True))
    for voice_id in voice_ids:
        delete_cloned_voice.apply_async((voice_id,), queue=settings.VOICE_QUEUE)
    # `updated_at` is the save that set the sample (task updates do not touch it)
    stuck_since = now - SWEEP_AFTER - timedelta(seconds=settings.VOICE_READY_TIMEOUT_S)
    stuck = Avatar.objects.filter(voice_state=VoiceState.ENROLLING, updated_at__lt=stuck_since)
    resumed = 0
    for avatar in stuck.exclude(voice_sample=""):
        if avatar.cloned_voice:
            args, task = (avatar.pk, avatar.cloned_voice, time.time()), check_voice
        else:
            args, task = (avatar.pk, avatar.voice_sample.name), enrol_voice
        task.apply_async(args, queue=settings.VOICE_QUEUE)
        Avatar.objects.filter(pk=avatar.pk).update(updated_at=now)
        resumed += 1
    return {"deletions": len(voice_ids), "enrolments": resumed, "gone": _recheck_ready_voices()}
