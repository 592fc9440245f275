from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from avatars.models import Avatar


@admin.register(Avatar)
class AvatarAdmin(admin.ModelAdmin):
    list_display = ["thumbnail", "name", "slug", "language", "voice", "enabled", "updated_at"]
    list_display_links = ["thumbnail", "name"]
    list_filter = ["enabled", "language"]
    search_fields = ["name", "slug", "persona", "greeting"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["preview", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "enabled", "language"]}),
        ("Character", {"fields": ["persona", "greeting", "voice"]}),
        ("Appearance", {"fields": ["image", "preview", "mouth_x", "mouth_y"]}),
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

    @admin.display(description="Preview")
    def preview(self, avatar: Avatar) -> str:
        if not avatar.image:
            return "No image yet."
        return format_html(
            '<img src="{}" alt="{}" class="avatar-preview" style="max-height:256px">',
            avatar.image_url(),
            avatar.name,
        )
