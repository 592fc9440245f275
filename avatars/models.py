"""Avatar characters: who the user talks to, how they speak and what they look like."""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from avatars.samples import validate_voice_sample


class Language(models.TextChoices):
    EN_US = "en-US", "English"
    ZH_CN = "zh-CN", "Mandarin Chinese"


class VoiceSource(models.TextChoices):
    PRESET = "preset", "CosyVoice preset"
    CLONED = "cloned", "Cloned from the voice sample"


class VoiceState(models.TextChoices):
    NONE = "", "No sample"
    ENROLLING = "enrolling", "Enrolling"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


def voice_sample_path(avatar: Avatar, filename: str) -> str:
    """An unguessable name: the sample is reachable by URL (DashScope fetches it), so its URL
    must not be found by trying avatar names."""
    suffix = PurePosixPath(filename).suffix.lower()[:8]
    return f"voices/{uuid.uuid4().hex}{suffix}"


def _fraction_validators() -> list[Any]:
    return [MinValueValidator(0.0), MaxValueValidator(1.0)]


class AvatarQuerySet(models.QuerySet["Avatar"]):
    def enabled(self) -> AvatarQuerySet:
        return self.filter(enabled=True)

    def default(self) -> Avatar | None:
        """The avatar named by DEFAULT_AVATAR, else the first enabled one."""
        enabled = self.enabled()
        return enabled.filter(slug=settings.DEFAULT_AVATAR).first() or enabled.first()


class Avatar(models.Model):
    slug = models.SlugField(unique=True, help_text="Used in URLs and the chat endpoint's avatar=…")
    name = models.CharField(max_length=80)
    persona = models.TextField(help_text="The system prompt: who the avatar is and how it talks.")
    greeting = models.TextField(blank=True, help_text="What the avatar says first.")
    image = models.ImageField(
        upload_to="avatars/",
        help_text="Reference portrait, frontal, face centred (≤ 512×512 used).",
    )
    voice = models.CharField(
        max_length=64,
        blank=True,
        help_text="TTS voice: a CosyVoice voice id for dashscope, an espeak-ng variant for espeak."
        " Empty uses the provider's default for the language.",
    )
    language = models.CharField(max_length=8, choices=Language.choices, default=Language.EN_US)
    enabled = models.BooleanField(default=True)
    mouth_x = models.FloatField(
        default=0.5, validators=_fraction_validators(), help_text="Mouth centre, fraction of width."
    )
    mouth_y = models.FloatField(
        default=0.7,
        validators=_fraction_validators(),
        help_text="Mouth centre, fraction of height.",
    )
    face = models.JSONField(
        default=dict,
        blank=True,
        help_text="Face landmarks found in the portrait (fractions of the stored image): mouth,"
        " lips, eyes, jaw, nose. Empty for a drawing with no face found: mouth_x/mouth_y apply.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # --- voice: a CosyVoice preset (`voice`), a voice cloned from a sample, espeak-ng settings
    voice_source = models.CharField(
        max_length=8,
        choices=VoiceSource.choices,
        default=VoiceSource.PRESET,
        help_text="What the cloud TTS speaks with. A cloned voice that is not ready (or was"
        " deleted at DashScope) falls back to the preset.",
    )
    voice_sample = models.FileField(
        upload_to=voice_sample_path,
        blank=True,
        validators=[validate_voice_sample],
        help_text="A recording to clone the voice from: WAV (16-bit), MP3 or M4A, 5–60 s,"
        " one speaker, no background noise. Replacing or clearing it deletes the cloned voice.",
    )
    cloned_voice = models.CharField(max_length=128, blank=True, editable=False)
    cloned_voice_model = models.CharField(max_length=64, blank=True, editable=False)
    voice_state = models.CharField(
        max_length=10, choices=VoiceState.choices, blank=True, editable=False
    )
    voice_message = models.TextField(blank=True, editable=False)
    espeak_voice = models.CharField(
        "espeak-ng voice",
        max_length=64,
        blank=True,
        help_text='Offline engine: an espeak-ng voice, optionally with a variant ("en-us",'
        ' "en-us+f3", "cmn"). Empty uses the language\'s voice.',
    )
    espeak_pitch = models.PositiveSmallIntegerField(
        "espeak-ng pitch",
        null=True,
        blank=True,
        validators=[MaxValueValidator(99)],
        help_text="Offline engine: pitch 0–99 (espeak-ng's default 50).",
    )
    espeak_rate = models.PositiveSmallIntegerField(
        "espeak-ng rate",
        null=True,
        blank=True,
        validators=[MinValueValidator(80), MaxValueValidator(450)],
        help_text="Offline engine: words per minute, 80–450 (espeak-ng's default 175).",
    )

    objects = AvatarQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def image_url(self) -> str:
        return self.image.url if self.image else ""

    def as_dict(self) -> dict[str, Any]:
        """The avatar as the API and the `init` frame describe it."""
        return {
            "id": self.pk,
            "slug": self.slug,
            "name": self.name,
            "persona": self.persona,
            "greeting": self.greeting,
            "image_url": self.image_url(),
            "voice": self.voice,
            "language": self.language,
        }

    def cloned_voice_ready(self) -> bool:
        """The cloned voice is chosen and the service said it is ready (for the configured model:
        a voice is enrolled for one TTS model)."""
        return (
            self.voice_source == VoiceSource.CLONED
            and bool(self.cloned_voice)
            and self.voice_state == VoiceState.READY
            and self.cloned_voice_model == settings.DASHSCOPE_TTS_MODEL
        )


class PendingVoiceDeletion(models.Model):
    """A cloned voice to delete at DashScope: kept until the service confirmed it, so a failed
    delete is retried (by its task, then by the periodic sweep), never lost."""

    voice_id = models.CharField(max_length=128, unique=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.voice_id
