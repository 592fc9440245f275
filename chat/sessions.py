"""Session life cycle on the database and storage side, shared by the consumer, the HTTP upload
view and the cleanup command (all synchronous; the consumer calls them off the event loop).

The turns in flight live elsewhere: their registry in Redis in chat.inflight, and how a turn
is stopped (revocation, render cancellation) in chat.stopping."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from avatars.models import Avatar
from chat import presence, stopping
from chat.models import ChatSession, EndReason, Message, Role
from chat.storage import delete_session_files

log = logging.getLogger(__name__)


def open_session(
    avatar: Avatar,
    mode: str,
    language: str,
    client_info: dict[str, Any],
    web_process: str = "",
    user_id: int | None = None,
) -> ChatSession:
    """`web_process`: the announced process holding the WebSocket (chat.presence); `user_id`:
    the logged-in user of the session's ticket (chat.access)."""
    return ChatSession.objects.create(
        avatar=avatar,
        mode=mode,
        language=language,
        client_info=client_info,
        web_process=web_process,
        user_id=user_id,
    )


def touch_interval_s() -> float:
    """How often a live consumer records activity in the database (it keeps the exact time in
    memory); the cleanup command allows twice this much slack so it never ends a live session."""
    return min(60.0, settings.SESSION_TIMEOUT_S / 4)


def touch(session_id: uuid.UUID | str) -> None:
    ChatSession.objects.filter(pk=session_id, ended_at__isnull=True).update(
        last_activity_at=timezone.now()
    )


def add_message(
    session_id: uuid.UUID | str,
    role: str,
    text: str = "",
    *,
    ref: str | None = None,
    **fields: Any,
) -> Message:
    """A new message; `ref`: the client's id of the user turn, for the turn's tasks."""
    stored = (ref or "").replace("\x00", "\ufffd")  # PostgreSQL text holds no NUL
    return Message.objects.create(session_id=session_id, role=role, text=text, ref=stored, **fields)


def history(session_id: uuid.UUID | str, before: Message | None = None) -> list[dict[str, str]]:
    """The conversation for the LLM, oldest first, without failed or empty messages."""
    messages = Message.objects.filter(session_id=session_id, error_code="").exclude(text="")
    if before is not None:
        messages = messages.filter(id__lt=before.id)
    recent = list(messages.order_by("-id")[: settings.LLM_MAX_HISTORY])
    return [m.history_entry() for m in reversed(recent)]


def latest(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """What `history` keeps of a conversation: its last LLM_MAX_HISTORY entries."""
    keep = settings.LLM_MAX_HISTORY
    return conversation[len(conversation) - keep :] if keep < len(conversation) else conversation


def end_session(session_id: uuid.UUID | str, reason: EndReason | str) -> int:
    """Mark the session ended, stop its tasks and delete every file it owns.

    Idempotent: a second call (cleanup after a crash, disconnect after stop) only deletes files
    that appeared meanwhile. Returns the number of files deleted in total.
    """
    with transaction.atomic():
        updated = ChatSession.objects.filter(pk=session_id, ended_at__isnull=True).update(
            ended_at=timezone.now(), end_reason=reason
        )
    if updated:
        stopping.stop_turn(session_id)
    deleted = delete_session_files(session_id)
    rows = ChatSession.objects.filter(pk=session_id)
    if deleted:  # one UPDATE: the row may be gone meanwhile (history purged)
        rows.update(files_deleted=F("files_deleted") + deleted)
    total = rows.values_list("files_deleted", flat=True).first()
    if settings.SESSION_RETENTION == "end":
        forget(session_id)
    return deleted if total is None else total


def forget(session_id: uuid.UUID | str) -> None:
    """Delete the history of an ended session (SESSION_RETENTION=end): its row and messages.
    A task still running then finds nothing and stops; a file it writes is deleted at once."""
    ChatSession.objects.filter(pk=session_id, ended_at__isnull=False).delete()


def idle_sessions(now: Any = None) -> list[uuid.UUID]:
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SESSION_TIMEOUT_S + 2 * touch_interval_s())
    return list(
        ChatSession.objects.filter(ended_at__isnull=True, last_activity_at__lt=cutoff).values_list(
            "id", flat=True
        )
    )


def purge_expired(now: Any = None) -> int:
    """Delete the history of sessions that ended longer ago than SESSION_RETENTION_DAYS."""
    if settings.SESSION_RETENTION_DAYS == 0:
        return 0
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.SESSION_RETENTION_DAYS)
    expired = ChatSession.objects.filter(ended_at__lt=cutoff)
    for session_id in expired.values_list("id", flat=True):
        delete_session_files(session_id)
    _, per_model = expired.delete()
    return per_model.get(ChatSession._meta.label, 0)


def orphaned_sessions() -> list[uuid.UUID]:
    """Open sessions whose web process died: it stopped renewing its presence in Redis.

    Nothing when Redis cannot tell (unreachable, or restarted less than one presence TTL ago):
    those sessions end by the idle timeout at the latest."""
    open_sessions = ChatSession.objects.filter(ended_at__isnull=True).exclude(web_process="")
    processes = set(open_sessions.values_list("web_process", flat=True).distinct())
    if not processes:
        return []
    try:
        live = presence.alive(processes)
    except (redis.RedisError, OSError) as exc:
        log.warning("cleanup: cannot tell which web processes are alive: %s", exc)
        return []
    if live is None:
        log.info("cleanup: Redis restarted recently, dead web processes are looked for later")
        return []
    dead = processes - live
    if not dead:
        return []
    log.warning("cleanup: web process(es) gone: %s", ", ".join(sorted(dead)))
    return list(open_sessions.filter(web_process__in=dead).values_list("id", flat=True))


def cleanup(now: Any = None) -> dict[str, int]:
    """End the sessions of dead web processes and idle sessions (their consumers are gone or
    silent), deleting their files, and purge old history."""
    orphaned = 0
    for session_id in orphaned_sessions():
        end_session(session_id, EndReason.SERVER_LOST)
        orphaned += 1
    ended = 0
    for session_id in idle_sessions(now):
        end_session(session_id, EndReason.TIMEOUT)
        ended += 1
    return {"ended": ended, "orphaned": orphaned, "purged": purge_expired(now)}


USER = Role.USER
ASSISTANT = Role.ASSISTANT
