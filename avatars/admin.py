"""The avatar admin: an uploaded portrait is cropped to its face and its landmarks kept; the
voice is chosen from presets, cloned from a sample or set for espeak-ng, and previewed.

A photo must show exactly one face, big enough and whole; otherwise the form says why and
nothing is saved. A drawing in which no face is found is kept as uploaded when "Drawn avatar"
is ticked, and the hand-set mouth point animates it. When a face is found (in a photo or a
drawing) the crop and the landmarks are used and the mouth point follows the landmarks.
"""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from asgiref.sync import async_to_sync
from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.files.base import ContentFile
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from PIL import Image, ImageOps, UnidentifiedImageError

from avatars import face as faces
from avatars.models import Avatar, Language, PendingVoiceDeletion, VoiceSource, VoiceState
from avatars.voices import enrol_again
from chat.audio import pcm_to_wav
from chat.providers.base import ProviderError, TTSProvider, Voice
from chat.providers.registry import asr_understands, backend_name, get_tts
from chat.providers.tts.presets import preset_choices, speaks

PREVIEW_MAX_CHARS = 300
RINGS = ["mouth_outer", "mouth_inner", "left_eye", "right_eye"]
LINES = ["jaw", "nose"]
_NOTE_SAFE = " !\"#$&'()*+,-./:;<=>?@[]^_`{|}~"  # printable ASCII but %, kept as it is
_VOICE_NAME = re.compile(r"[A-Za-z0-9_.+\-]{1,64}")


def voice_state_of(avatar: Avatar) -> tuple[str, str, str]:
    """(state, label, details) of the avatar's cloned voice, as the admin shows it."""
    if not avatar.voice_sample:
        return "", "No sample", "upload one to clone the avatar's voice."
    state = VoiceState(avatar.voice_state or VoiceState.ENROLLING)
    details = {
        VoiceState.ENROLLING: "DashScope is cloning the voice…",
        VoiceState.READY: f"{avatar.cloned_voice} (for {avatar.cloned_voice_model})",
        VoiceState.FAILED: avatar.voice_message,
    }.get(state, "")
    if state == VoiceState.READY and avatar.cloned_voice_model != settings.DASHSCOPE_TTS_MODEL:
        details += (
            f" — made for another model than {settings.DASHSCOPE_TTS_MODEL}: clone it again"
            " (the list's action); the preset speaks meanwhile."
        )
    return state.value, state.label, details


def cloned_voice_unused(avatar: Avatar) -> str:
    """Why the avatar's chosen cloned voice speaks nowhere ("" when it is used, or none is
    chosen): the offline engine speaks with the espeak-ng settings."""
    tts = backend_name("tts")
    if avatar.voice_source != VoiceSource.CLONED or tts == "dashscope":
        return ""
    return f"TTS_BACKEND={tts} speaks with the espeak-ng settings"


def _number(params: Any, name: str, low: int, high: int, saved: int | None) -> int | None:
    if name not in params:
        return saved
    raw = params[name].strip()
    if not raw:
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"{name.replace('_', ' ')} must be a whole number from {low} to {high}")
    return int(raw)


def preview_choice(avatar: Avatar, params: Any) -> tuple[str, Voice, str, str]:
    """What a preview speaks: the avatar's saved voice, overridden by the form's unsaved values
    (text, voice, language, and a note when the cloned voice cannot speak yet); ValueError
    names a bad value."""
    from chat.providers.tts.espeak import known_voices

    language = params.get("language", avatar.language)
    if language not in Language.values:
        raise ValueError("unknown language")
    text = params.get("greeting", avatar.greeting).strip() or f"Hello, I am {avatar.name}."
    preset = params.get("voice", avatar.voice).strip()
    espeak = params.get("espeak_voice", avatar.espeak_voice).strip()
    for name in (preset, espeak):
        if name and not _VOICE_NAME.fullmatch(name):
            raise ValueError("a voice name may hold letters, digits and _ . + - only")
    base, _, variant = espeak.lower().partition("+")
    known = known_voices()
    if espeak and known and (base not in known or (variant and variant not in known)):
        raise ValueError(f"espeak-ng knows no voice {espeak!r}")
    source = params.get("voice_source", avatar.voice_source) or VoiceSource.PRESET
    if source not in VoiceSource.values:
        raise ValueError("unknown voice source")
    cloned, note = "", ""
    if source == VoiceSource.CLONED:
        if avatar.cloned_voice_ready():
            cloned = avatar.cloned_voice
        else:
            note = "the cloned voice is not ready: this is the preset"
    voice = Voice(
        preset=preset,
        cloned=cloned,
        espeak=espeak,
        pitch=_number(params, "espeak_pitch", 0, 99, avatar.espeak_pitch),
        rate=_number(params, "espeak_rate", 80, 450, avatar.espeak_rate),
    )
    return text[:PREVIEW_MAX_CHARS], voice, language, note


def speak_for_preview(
    tts: TTSProvider, text: str, voice: Voice, language: str
) -> tuple[bytes, str]:
    """The preview's audio, and why the cloned voice did not speak it ("" when it did or none
    was chosen). Turns fall back to the preset quietly (a warning in the log); the operator
    who asked to hear the cloned voice is told instead of hearing the preset unawares."""
    synthesize = async_to_sync(tts.synthesize)
    if not voice.cloned:
        return synthesize(text, voice, language), ""
    try:
        return synthesize(text, replace(voice, preset=voice.cloned, cloned=""), language), ""
    except ProviderError as exc:
        if exc.retryable:  # the service is unwell, not the voice: the error is the answer
            raise
        reason = exc.provider_message or exc.message
    return synthesize(text, replace(voice, cloned=""), language), reason


def _points(points: list[list[float]]) -> str:
    return " ".join(f"{x:.4f},{y:.4f}" for x, y in points)


def landmarks_svg(avatar: Avatar) -> SafeString:
    """The stored landmarks (or, for a drawing, the mouth point) as an SVG laid over the image."""
    face = avatar.face or {}
    points = face.get("points", {})
    shapes = format_html_join(
        "",
        '<polygon class="landmarks-{}" points="{}"/>',
        ((name, _points(points[name])) for name in RINGS if points.get(name)),
    ) + format_html_join(
        "",
        '<polyline class="landmarks-{}" points="{}"/>',
        ((name, _points(points[name])) for name in LINES if points.get(name)),
    )
    if face.get("box"):
        x0, y0, x1, y1 = face["box"]
        shapes += format_html(
            '<rect class="landmarks-box" x="{}" y="{}" width="{}" height="{}" stroke="#f33"/>',
            x0,
            y0,
            x1 - x0,
            y1 - y0,
        )
    mx, my = face.get("mouth") or (avatar.mouth_x, avatar.mouth_y)
    shapes += format_html(
        '<circle class="landmarks-mouth" cx="{}" cy="{}" r="0.012" fill="#f0f" stroke="none"/>',
        mx,
        my,
    )
    return format_html(
        '<svg class="avatar-landmarks" viewBox="0 0 1 1" preserveAspectRatio="none"'
        ' style="position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none"'
        ' fill="none" stroke="#3f3" stroke-width="0.006">'
        "{}</svg>",
        shapes,
    )


class AvatarForm(forms.ModelForm):
    """The avatar form: a portrait cropped to its face, presets from a list, espeak-ng names
    checked."""

    drawing = forms.BooleanField(
        required=False,
        label="Drawn avatar",
        help_text="Tick for a drawing: if no face is found in it, the image is kept as uploaded"
        " and the mouth point below is used. Photos leave this unticked: a photo without one"
        " clear face is refused.",
    )

    class Meta:
        model = Avatar
        # the admin's fieldsets name every field; these are the ones this form adjusts
        fields = ["voice", "voice_source", "voice_sample", "espeak_voice", "espeak_pitch"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", f"Default ({settings.DASHSCOPE_TTS_VOICE})"), *preset_choices()]
        current = self.instance.voice if self.instance and self.instance.pk else ""
        if current and current not in dict(choices):
            choices.append((current, f"{current} (set by hand)"))
        self.fields["voice"] = forms.ChoiceField(
            choices=choices,
            required=False,
            label="Preset voice",
            help_text="A CosyVoice preset (the languages it speaks in brackets); also the"
            " fallback of a cloned voice that cannot speak.",
        )

        if "voice_source" in self.fields:  # forms posted before the field existed: the preset
            self.fields["voice_source"].required = False

    def clean_voice_source(self) -> str:
        return self.cleaned_data.get("voice_source") or VoiceSource.PRESET

    def clean_espeak_voice(self) -> str:
        from chat.providers.tts.espeak import known_voices

        name = self.cleaned_data.get("espeak_voice", "").strip()
        if not name:
            return name
        base, _, variant = name.lower().partition("+")
        known = known_voices()
        if known and (base not in known or (variant and variant not in known)):
            raise forms.ValidationError(
                f"espeak-ng knows no voice {name!r}: try en-us, en-us+f3, en-gb+m3 or cmn."
            )
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = self._clean_portrait(super().clean())
        preset, language = cleaned.get("voice", ""), cleaned.get("language", "")
        if preset and language and speaks(preset, language) is False:
            self.add_error(
                "voice",
                f"{preset} does not speak {Language(language).label}: choose a preset that does.",
            )
        if cleaned.get("voice_source") == VoiceSource.CLONED and not (
            cleaned.get("voice_sample") or (self.instance.pk and self.instance.voice_sample)
        ):
            self.add_error("voice_sample", "Upload a voice sample to use a cloned voice.")
        return cleaned

    def _clean_portrait(self, cleaned: dict[str, Any]) -> dict[str, Any]:
        upload = cleaned.get("image")
        if "image" not in self.changed_data or not upload:
            return cleaned
        try:
            upload.seek(0)
            with Image.open(upload) as raw:
                portrait = ImageOps.exif_transpose(raw).convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError):
            self.add_error("image", "This image cannot be read: upload a JPEG, PNG or WebP.")
            return cleaned
        try:
            found = faces.detect(portrait)
        except faces.FaceError as exc:
            if cleaned.get("drawing"):
                upload.seek(0)
                self.instance.face = {}
                return cleaned
            self.add_error(
                "image", f"{exc} For a drawing, tick “Drawn avatar” and set the mouth point."
            )
            return cleaned
        crop, in_crop = faces.crop_square(portrait, found)
        buffer = io.BytesIO()
        crop.save(buffer, "PNG", optimize=True)
        cleaned["image"] = ContentFile(buffer.getvalue(), name=f"{Path(upload.name).stem}.png")
        cleaned["mouth_x"], cleaned["mouth_y"] = (round(v, 4) for v in in_crop.mouth)
        self.instance.face = in_crop.to_json()
        return cleaned


@admin.register(Avatar)
class AvatarAdmin(admin.ModelAdmin):
    form = AvatarForm
    list_display = [
        "thumbnail",
        "name",
        "slug",
        "language",
        "voice_summary",
        "has_face",
        "enabled",
        "updated_at",
    ]
    list_display_links = ["thumbnail", "name"]
    list_filter = ["enabled", "language"]
    search_fields = ["name", "slug", "persona", "greeting"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = [
        "preview",
        "created_at",
        "updated_at",
        "cloned_voice_state",
        "voice_preview",
        "offline_recognition",
    ]
    fieldsets = [
        (None, {"fields": ["name", "slug", "enabled", "language", "offline_recognition"]}),
        ("Character", {"fields": ["persona", "greeting"]}),
        (
            "Voice",
            {
                "fields": [
                    "voice_source",
                    "voice",
                    "voice_sample",
                    "cloned_voice_state",
                    "espeak_voice",
                    "espeak_pitch",
                    "espeak_rate",
                    "voice_preview",
                ]
            },
        ),
        ("Appearance", {"fields": ["image", "drawing", "preview", "mouth_x", "mouth_y"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    actions = ["enrol_voices_again"]

    class Media:
        js = ["admin/avatars/voice_preview.js"]

    @admin.action(description="Clone the voice again from the stored sample")
    def enrol_voices_again(self, request: HttpRequest, queryset: Any) -> None:
        started = sum(enrol_again(avatar) for avatar in queryset)
        skipped = queryset.count() - started
        self.message_user(
            request,
            f"Enrolling {started} voice(s) again"
            + (f"; {skipped} avatar(s) have no sample." if skipped else "."),
        )

    @admin.display(description="Image")
    def thumbnail(self, avatar: Avatar) -> str:
        if not avatar.image:
            return "—"
        return format_html(
            '<img src="{}" alt="{}" class="avatar-thumb" style="height:48px;border-radius:6px">',
            avatar.image_url(),
            avatar.name,
        )

    @admin.display(description="Face landmarks", boolean=True)
    def has_face(self, avatar: Avatar) -> bool:
        return bool(avatar.face)

    @admin.display(description="Preview")
    def preview(self, avatar: Avatar) -> str:
        if not avatar.image:
            return "No image yet."
        caption = (
            "Face landmarks found in the portrait (green), the face box (red), the mouth (pink)."
            if avatar.face
            else "A drawing with no face found: the pink dot is the hand-set mouth point."
        )
        return format_html(
            '<div style="position:relative;display:inline-block;line-height:0">'
            '<img src="{}" alt="{}" class="avatar-preview" style="max-height:256px;display:block">'
            "{}</div><p>{}</p>",
            avatar.image_url(),
            avatar.name,
            landmarks_svg(avatar),
            caption,
        )

    @admin.display(description="Voice")
    def voice_summary(self, avatar: Avatar) -> str:
        preset = avatar.voice or "default"
        if avatar.voice_source != VoiceSource.CLONED:
            return preset
        _, label, _ = voice_state_of(avatar)
        unused = cloned_voice_unused(avatar)
        if unused:
            return format_html(
                'cloned ({}), else {} <strong class="tts-warning">(unused: {})</strong>',
                label.lower(),
                preset,
                unused,
            )
        return f"cloned ({label.lower()}), else {preset}"

    @admin.display(description="Cloned voice")
    def cloned_voice_state(self, avatar: Avatar) -> str:
        state, label, details = voice_state_of(avatar)
        badge = format_html(
            '<span class="voice-state" data-state="{}" data-url="{}"><strong>{}</strong>'
            ' <span class="voice-state-details">{}</span></span>',
            state,
            reverse("admin:avatars_avatar_voice_state", args=[avatar.pk]) if avatar.pk else "",
            label,
            details,
        )
        unused = cloned_voice_unused(avatar)
        if not unused:
            return badge
        return format_html(
            '{}<div><strong class="tts-warning">The cloned voice is unused: {}; it speaks only'
            " with TTS_BACKEND=dashscope.</strong></div>",
            badge,
            unused,
        )

    @admin.display(description="Hear it")
    def voice_preview(self, avatar: Avatar) -> str:
        if not avatar.pk:
            return "Save the avatar first."
        url = reverse("admin:avatars_avatar_preview_voice", args=[avatar.pk])
        return format_html(
            '<button type="button" class="button voice-preview" data-url="{}">Preview voice'
            '</button> <span class="voice-preview-status" aria-live="polite"></span>'
            '<audio class="voice-preview-audio" controls hidden></audio>'
            '<div class="help">Speaks the greeting in the voice chosen above, saved or not,'
            " with the configured engine ({}).</div>",
            url,
            settings.TTS_BACKEND,
        )

    @admin.display(description="Speech recognition")
    def offline_recognition(self, avatar: Avatar) -> str:
        if not avatar.pk or asr_understands(avatar.language):
            return format_html("Users can speak {} to this avatar.", avatar.get_language_display())
        return format_html(
            '<strong class="asr-warning">The offline recogniser ({}) understands English only:'
            " users speaking {} to this avatar get English guesses. Configure a cloud recogniser"
            " (ASR_BACKEND=dashscope) or let users type.</strong>",
            settings.ASR_BACKEND,
            avatar.get_language_display(),
        )

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:avatar_id>/preview-voice/",
                self.admin_site.admin_view(self.preview_voice),
                name="avatars_avatar_preview_voice",
            ),
            path(
                "<int:avatar_id>/voice-state/",
                self.admin_site.admin_view(self.voice_state),
                name="avatars_avatar_voice_state",
            ),
        ]
        return own + super().get_urls()

    def preview_voice(self, request: HttpRequest, avatar_id: int) -> HttpResponse:
        """The greeting spoken in the avatar's voice as WAV, with any TTS backend; the query
        may carry the form's unsaved values, so the operator hears a choice before saving."""
        avatar = get_object_or_404(Avatar, pk=avatar_id)
        if not self.has_view_permission(request, avatar):
            return JsonResponse({"error": "not allowed"}, status=403)
        try:
            text, voice, language, note = preview_choice(avatar, request.GET)
        except ValueError as exc:
            return JsonResponse({"error": str(exc)}, status=400)
        tts = get_tts()
        try:
            pcm, refused = speak_for_preview(tts, text, voice, language)
        except ProviderError as exc:
            return JsonResponse({"error": exc.message, "code": exc.code}, status=502)
        if refused:
            note = f"the cloned voice cannot speak ({refused[:200]}): this is the preset"
        if not pcm:
            return JsonResponse({"error": "the voice produced no audio"}, status=502)
        response = HttpResponse(pcm_to_wav(pcm, tts.sample_rate), content_type="audio/wav")
        response["Cache-Control"] = "no-store"
        if note:  # a header is Latin-1 on one line: the service's words are percent-encoded
            response["X-Voice-Note"] = quote(note, safe=_NOTE_SAFE)
        return response

    def voice_state(self, request: HttpRequest, avatar_id: int) -> JsonResponse:
        """The cloned voice's state, for the change page to follow an enrolment."""
        avatar = get_object_or_404(Avatar, pk=avatar_id)
        if not self.has_view_permission(request, avatar):
            return JsonResponse({"error": "not allowed"}, status=403)
        state, label, details = voice_state_of(avatar)
        return JsonResponse({"state": state, "label": label, "details": details})


@admin.register(PendingVoiceDeletion)
class PendingVoiceDeletionAdmin(admin.ModelAdmin):
    """Cloned voices still to be deleted at DashScope (retried until the service confirms)."""

    list_display = ["voice_id", "attempts", "last_error", "created_at", "updated_at"]
    readonly_fields = ["voice_id", "attempts", "last_error", "created_at", "updated_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
