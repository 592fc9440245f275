"""Chat history in the admin, read-only: it is a record, not something to edit."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from chat.models import ChatSession, Message


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = ["created_at", "role", "text", "audio", "video", "timings", "error_code"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ChatSession)
class ChatSessionAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "avatar",
        "mode",
        "language",
        "started_at",
        "last_activity_at",
        "ended_at",
        "end_reason",
        "user",
    ]
    list_filter = ["mode", "end_reason", "avatar"]
    search_fields = ["id", "messages__text", "user__username"]
    date_hierarchy = "started_at"
    inlines = [MessageInline]
    exclude = ["token"]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "session", "role", "short_text", "error_code"]
    list_filter = ["role", "error_code"]
    search_fields = ["text", "session__id"]

    @admin.display(description="Text")
    def short_text(self, message: Message) -> str:
        return message.text[:80]


def _with_health_page(get_urls: Any) -> Any:
    """The admin's URLs with "Service health" (chat.health_page) among them, wherever the
    admin is mounted, behind the admin's own login and staff check."""

    def urls() -> list:
        from django.urls import path

        from chat.health_page import service_health

        page = path("health/", admin.site.admin_view(service_health), name="service_health")
        return [page, *get_urls()]

    return urls


admin.site.get_urls = _with_health_page(admin.site.get_urls)
