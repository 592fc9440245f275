"""The life of an avatar's cloned voice: a new sample is enrolled, a replaced or cleared sample
and a deleted avatar take their voice at DashScope with them.

Signal handlers see every change (admin, shell, fixtures); the DashScope calls run as Celery
tasks (avatars.tasks) sent once the transaction commits. A voice to delete is first written to
`PendingVoiceDeletion`, so a delete that fails (or a task lost with its worker) is tried again.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from avatars.models import Avatar, PendingVoiceDeletion, VoiceSource, VoiceState
from chat.providers.base import Voice
from chat.providers.registry import backend_name

log = logging.getLogger(__name__)


def speaking_voice(avatar: Avatar | None) -> Voice:
    """The voice turns speak with (no query: the avatar is already loaded). A cloned voice that
    is chosen but not ready falls back to the preset, with a warning."""
    if avatar is None:
        return Voice()
    cloned = ""
    if avatar.cloned_voice_ready():
        cloned = avatar.cloned_voice
    elif avatar.voice_source == VoiceSource.CLONED and backend_name("tts") == "dashscope":
        if not avatar.cloned_voice:
            reason = "none enrolled yet"
        elif avatar.voice_state != VoiceState.READY:
            reason = avatar.get_voice_state_display().lower()
        else:
            reason = f"made for {avatar.cloned_voice_model}, not {settings.DASHSCOPE_TTS_MODEL}"
        log.warning(
            "avatar %s: its cloned voice is not usable (%s); speaking with the preset %r",
            avatar.slug,
            reason,
            avatar.voice or "default",
        )
    return Voice(
        preset=avatar.voice,
        cloned=cloned,
        espeak=avatar.espeak_voice,
        pitch=avatar.espeak_pitch,
        rate=avatar.espeak_rate,
    )


VOICE_FIELDS = (
    "voice",
    "voice_source",
    "cloned_voice",
    "cloned_voice_model",
    "voice_state",
    "espeak_voice",
    "espeak_pitch",
    "espeak_rate",
)


def refresh_voice(avatar: Avatar) -> None:
    """Read an avatar's voice fields again, for a session's next turn: its cloned voice may have
    become ready, or its sample been replaced, since the session opened. An avatar deleted
    meanwhile keeps the voice it had."""
    try:
        avatar.refresh_from_db(fields=VOICE_FIELDS)
    except Avatar.DoesNotExist:
        pass


def forget_voice(voice_id: str) -> None:
    """Delete a cloned voice at DashScope, surely: recorded now, deleted by a task after the
    commit, retried until the service confirms."""
    if not voice_id:
        return
    PendingVoiceDeletion.objects.get_or_create(voice_id=voice_id)

    def send() -> None:
        from avatars.tasks import delete_cloned_voice

        try:
            delete_cloned_voice.apply_async((voice_id,), queue=settings.VOICE_QUEUE)
        except Exception:  # noqa: BLE001 - the broker is down: the periodic sweep sends it later
            log.warning("could not queue the deletion of voice %s; the sweep will", voice_id)

    transaction.on_commit(send)


def _delete_file_later(storage: Any, name: str) -> None:
    if name:
        transaction.on_commit(lambda: storage.delete(name))


def enrol(avatar: Avatar) -> None:
    """Send the avatar's current sample to enrolment once the transaction commits."""
    avatar_id, sample = avatar.pk, avatar.voice_sample.name

    def send() -> None:
        from avatars.tasks import enrol_voice

        try:
            enrol_voice.apply_async((avatar_id, sample), queue=settings.VOICE_QUEUE)
        except Exception:  # noqa: BLE001 - the broker is down: the periodic sweep resumes it
            log.warning("could not queue the enrolment of avatar %s; the sweep will", avatar_id)

    transaction.on_commit(send)


def enrol_again(avatar: Avatar) -> bool:
    """Clone the avatar's voice again from its stored sample (after a failure, or for another
    model); its current cloned voice is deleted. False when it has no sample."""
    if not avatar.voice_sample:
        return False
    with transaction.atomic():
        forget_voice(avatar.cloned_voice)
        Avatar.objects.filter(pk=avatar.pk).update(
            cloned_voice="",
            cloned_voice_model="",
            voice_state=VoiceState.ENROLLING,
            voice_message="",
        )
        enrol(avatar)
    return True


@receiver(pre_save, sender=Avatar)
def _sample_changing(sender: type[Avatar], instance: Avatar, **kwargs: Any) -> None:
    """A replaced or cleared sample: its voice is deleted, the new one will be enrolled."""
    if kwargs.get("raw"):
        return
    old = Avatar.objects.filter(pk=instance.pk).first() if instance.pk else None
    old_sample = old.voice_sample.name if old else ""
    instance._enrol_sample = bool(instance.voice_sample) and (
        instance.voice_sample.name != old_sample or not instance.voice_sample._committed
    )
    if old is None or (old_sample == instance.voice_sample.name and not instance._enrol_sample):
        return
    if old.cloned_voice:
        forget_voice(old.cloned_voice)
    if old_sample and old_sample != instance.voice_sample.name:
        _delete_file_later(old.voice_sample.storage, old_sample)
    instance.cloned_voice = instance.cloned_voice_model = instance.voice_message = ""
    instance.voice_state = VoiceState.ENROLLING if instance.voice_sample else VoiceState.NONE


@receiver(post_save, sender=Avatar)
def _sample_saved(sender: type[Avatar], instance: Avatar, **kwargs: Any) -> None:
    if kwargs.get("raw"):
        return
    if getattr(instance, "_enrol_sample", False):
        instance._enrol_sample = False
        if instance.voice_state != VoiceState.ENROLLING:
            Avatar.objects.filter(pk=instance.pk).update(voice_state=VoiceState.ENROLLING)
            instance.voice_state = VoiceState.ENROLLING
        enrol(instance)


@receiver(post_delete, sender=Avatar)
def _avatar_deleted(sender: type[Avatar], instance: Avatar, **kwargs: Any) -> None:
    forget_voice(instance.cloned_voice)
    if instance.voice_sample:
        _delete_file_later(instance.voice_sample.storage, instance.voice_sample.name)
