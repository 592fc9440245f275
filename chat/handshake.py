"""Opening a session on `/ws/chat/`: who may (token, ticket, login), with which avatar, mode and
language, and the `init` frame that answers (docs/protocol.md). The consumer calls `check` on
the query string; a refusal carries its error code and the WebSocket close code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model

from avatars.models import Avatar
from chat import access, ice, protocol, video
from chat.models import ChatSession
from chat.protocol import AUDIO_FORMATS, PROTOCOL_VERSION, Close, Err
from chat.providers.registry import asr_languages

LANGUAGE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-")


class Refused(Exception):
    """The session is not opened: the `error` to send, then the close code."""

    def __init__(
        self,
        code: Err,
        message: str,
        close_code: int,
        *,
        retryable: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code
        self.retryable, self.extra = retryable, extra


@dataclass
class Opening:
    """What a session is opened with, once the query string passed every check."""

    avatar: Avatar
    mode: str
    language: str
    ticket: access.Ticket | None = None


def _active_user(user_id: int | None) -> bool:
    return (
        user_id is not None and get_user_model().objects.filter(pk=user_id, is_active=True).exists()
    )


def _find_avatar(slug: str | None) -> Avatar | None:
    avatars = Avatar.objects.enabled()
    return avatars.filter(slug=slug).first() if slug else avatars.default()


async def check(params: dict[str, str]) -> Opening:
    """The session's avatar, mode and language from the query string, or Refused."""
    ticket = await _admit(params)
    mode = params.get("mode") or (ticket.mode if ticket else "voice")
    if mode not in ("voice", "video"):
        raise Refused(Err.MODE_INVALID, "mode must be voice or video", Close.BAD_REQUEST)
    avatar = await database_sync_to_async(_find_avatar)(
        params.get("avatar") or (ticket.avatar if ticket else None)
    )
    if avatar is None:
        raise Refused(Err.AVATAR_NOT_FOUND, "no such avatar", Close.NOT_FOUND)
    language = params.get("lang") or avatar.language
    if len(language) > 16 or not set(language) <= LANGUAGE_CHARS:
        raise Refused(Err.BAD_MESSAGE, "lang must be a language tag like en-US", Close.BAD_REQUEST)
    return Opening(avatar, mode, language, ticket)


async def _admit(params: dict[str, str]) -> access.Ticket | None:
    """The ticket the session opens with (None without one), when access allows it."""
    if params.get("ticket"):
        try:
            ticket = access.check(
                params["ticket"], avatar=params.get("avatar"), mode=params.get("mode")
            )
            if settings.CHAT_ACCESS == access.LOGIN and not await database_sync_to_async(
                _active_user
            )(ticket.user_id):
                raise access.TicketRefused("the ticket is not for a user who may log in")
        except access.TicketRefused as exc:
            raise Refused(Err.AUTH, exc.message, Close.AUTH, retryable=exc.retryable) from None
        return ticket
    if settings.CHAT_ACCESS == access.TOKEN:
        if not access.token_ok(params.get("token", "")):
            raise Refused(Err.AUTH, "a valid token or ticket is required", Close.AUTH)
    elif access.ticket_required():
        raise Refused(
            Err.AUTH, "a ticket is required: POST /api/tickets", Close.AUTH, retryable=True
        )
    return None


async def idle_video_url(avatar: Avatar, mode: str, absolute: Callable[[str], str]) -> str | None:
    """The avatar's idle loop for a video session (a storage lookup), else None."""
    if mode != "video":
        return None
    try:
        renderer = video.renderer()
    except RuntimeError:  # a process without the rendering app
        return None
    url = await asyncio.to_thread(renderer.idle_url, avatar)
    return absolute(url) if url else None


def init_frame(
    session: ChatSession,
    avatar: Avatar,
    language: str,
    absolute: Callable[[str], str],
    idle_video_url: str | None = None,
) -> dict[str, Any]:
    """The first frame of a session; `absolute` makes a site-relative URL absolute."""
    session_id = str(session.id)
    return protocol.event(
        "init",
        None,
        session_id=session_id,
        session_token=session.token,
        mode=session.mode,
        language=language,
        avatar={
            "id": avatar.id,
            "slug": avatar.slug,
            "name": avatar.name,
            "persona": avatar.persona,
            "greeting": avatar.greeting,
            "image_url": absolute(avatar.image_url()),
            "idle_video_url": idle_video_url,
            "voice": avatar.voice,
            "language": avatar.language,
        },
        server_info={
            "version": PROTOCOL_VERSION,
            "heartbeat_interval_s": settings.HEARTBEAT_INTERVAL_S,
            "session_timeout_s": settings.SESSION_TIMEOUT_S,
            "ice_servers": ice.session_ice_servers(session_id),
            "max_upload_bytes": settings.MAX_UPLOAD_BYTES,
            "max_audio_seconds": settings.MAX_AUDIO_SECONDS,
            "audio_formats": AUDIO_FORMATS,
            "asr_languages": asr_languages(),
            "providers": {
                "asr": settings.ASR_BACKEND,
                "llm": settings.LLM_BACKEND,
                "tts": settings.TTS_BACKEND,
                "renderer": settings.RENDER_BACKEND,
            },
        },
    )
