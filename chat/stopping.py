"""Stopping a session's work in flight: its upload turn (Celery revocation) and its renders
(the renderer's cancellation). Used by an interrupt, a new utterance, and the session's end."""

from __future__ import annotations

import logging
import uuid

import redis
from kombu.exceptions import OperationalError

from celery_app import app
from chat import inflight, video
from chat.models import Message, Role

log = logging.getLogger(__name__)


def revoke_tasks(task_ids: list[str]) -> None:
    if task_ids:
        app.control.revoke(task_ids, terminate=True, signal="SIGTERM")


def cancel_renders(task_ids: list[str]) -> None:
    for task_id in task_ids:
        video.renderer().cancel(task_id)


def unfinished_renders(session_id: uuid.UUID | str) -> list[str]:
    return list(
        Message.objects.filter(session_id=session_id, role=Role.ASSISTANT, video="", error_code="")
        .exclude(render_task_id="")
        .values_list("render_task_id", flat=True)
    )


def stop_turn(session_id: uuid.UUID | str, *, renders: bool = True) -> bool:
    """Revoke the session's upload turn and renders in flight. True if there was one.
    `renders=False`: the session has none to look for (a voice session's replies render none).

    With Redis unreachable past the clients' retries this stops nothing and says so in the
    log; the tasks then find the session ended (or their files deleted) and stop by themselves.
    """
    try:
        turn_ids = inflight.take_turn(session_id)
        render_ids = unfinished_renders(session_id) if renders else []
        revoke_tasks(turn_ids)
        cancel_renders(render_ids)
    except (redis.RedisError, OSError, OperationalError) as exc:
        log.warning("could not stop the turn of session %s: %s", session_id, exc)
        return False
    return bool(turn_ids or render_ids)
