"""The avatar admin: an uploaded portrait is cropped to its face and its landmarks kept.

A photo must show exactly one face, big enough and whole; otherwise the form says why and
nothing is saved. A drawing in which no face is found is kept as uploaded when "Drawn avatar"
is ticked, and the hand-set mouth point animates it. When a face is found (in a photo or a
drawing) the crop and the landmarks are used and the mouth point follows the landmarks.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from django import forms
from django.contrib import admin
from django.core.files.base import ContentFile
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from PIL import Image, ImageOps, UnidentifiedImageError

from avatars import face as faces
from avatars.models import Avatar

RINGS = ["mouth_outer", "mouth_inner", "left_eye", "right_eye"]
LINES = ["jaw", "nose"]


class AvatarForm(forms.ModelForm):
    drawing = forms.BooleanField(
        required=False,
        label="Drawn avatar",
        help_text="Tick for a drawing: if no face is found in it, the image is kept as uploaded"
        " and the mouth point below is used. Photos leave this unticked: a photo without one"
        " clear face is refused.",
    )

    class Meta:
        model = Avatar
        fields = [
            "name",
            "slug",
            "enabled",
            "language",
            "persona",
            "greeting",
            "voice",
            "image",
            "mouth_x",
            "mouth_y",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
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


@admin.register(Avatar)
class AvatarAdmin(admin.ModelAdmin):
    form = AvatarForm
    list_display = [
        "thumbnail",
        "name",
        "slug",
        "language",
        "voice",
        "has_face",
        "enabled",
        "updated_at",
    ]
    list_display_links = ["thumbnail", "name"]
    list_filter = ["enabled", "language"]
    search_fields = ["name", "slug", "persona", "greeting"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["preview", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "enabled", "language"]}),
        ("Character", {"fields": ["persona", "greeting", "voice"]}),
        ("Appearance", {"fields": ["image", "drawing", "preview", "mouth_x", "mouth_y"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

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
