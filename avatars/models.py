"""Avatar characters: who the user talks to, how they speak and what they look like."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class Language(models.TextChoices):
    EN_US = "en-US", "English"
    ZH_CN = "zh-CN", "Mandarin Chinese"


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
