"""Chat history: sessions of the WebSocket protocol and the messages of their turns."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class Mode(models.TextChoices):
    VOICE = "voice", "Voice"
    VIDEO = "video", "Video"


class EndReason(models.TextChoices):
    STOPPED = "stopped", "Stopped by the client"
    DISCONNECTED = "disconnected", "Connection dropped"
    TIMEOUT = "timeout", "Idle timeout"
    ERROR = "error", "Server error"
    SERVER_LOST = "server_lost", "Its web process died"


def new_token() -> str:
    return secrets.token_urlsafe(24)


class ChatSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    token = models.CharField(max_length=64, default=new_token, editable=False)
    avatar = models.ForeignKey(
        "avatars.Avatar", null=True, on_delete=models.SET_NULL, related_name="sessions"
    )
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.VOICE)
    language = models.CharField(max_length=16, blank=True)
    client_info = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_activity_at = models.DateTimeField(default=timezone.now, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True, db_index=True)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)
    files_deleted = models.PositiveIntegerField(default=0)
    # the web process holding the WebSocket (chat.presence): the cleanup ends the session
    # soon after that process dies
    web_process = models.CharField(max_length=64, blank=True, editable=False)
    # the logged-in user whose ticket opened the session (chat.access); their history goes
    # with them when the account is deleted
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="chat_sessions",
    )

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.id} ({self.mode})"

    @property
    def group(self) -> str:
        return group_name(self.id)

    @property
    def is_ended(self) -> bool:
        return self.ended_at is not None


def group_name(session_id: uuid.UUID | str) -> str:
    """The channel-layer group every event of the session is published to."""
    return f"session.{session_id}"


class Role(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class Message(models.Model):
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    text = models.TextField(blank=True)
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    # storage names (under the session's prefix) and the URLs handed out for them
    audio = models.CharField(max_length=500, blank=True)
    audio_url = models.CharField(max_length=2000, blank=True)
    video = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # the Celery task of the upload turn that made a user row, and of the render of an
    # assistant row's video
    turn_task_id = models.CharField(max_length=64, blank=True)
    render_task_id = models.CharField(max_length=64, blank=True)
    # a user row's turn: the client's `id` (any string of at most 64 characters, so maybe the
    # user's words), which the turn's tasks read here to send back as `ref`: their arguments,
    # which Flower shows, are ids only
    ref = models.CharField(max_length=64, blank=True)
    # milliseconds per stage: asr, llm, tts, render, queue, ...
    timings = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:40]}"

    def add_timing(self, stage: str, ms: float) -> None:
        self.timings = {**self.timings, stage: round(ms, 1)}

    def history_entry(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.text}
