"""Celery tasks of the speech workers (queue `speech`): the upload turn's chain and cleanup.

Each step takes IDs, records its result and timing on the chat history, and publishes its
protocol events to the session's group. A failing step publishes the stage's error code, keeps
the error on the message and stops the chain (the session stays usable for the next turn).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from asgiref.sync import async_to_sync
from celery import Task, shared_task
from celery.exceptions import Ignore
from django.core.files.storage import default_storage

from chat import sessions
from chat.events import publish, publish_sync, run_sync
from chat.models import Message
from chat.protocol import error
from chat.providers.base import ProviderError
from chat.reply import Reply, ReplyRequest

RETRY_BACKOFF_S = (1, 4)


@shared_task(ignore_result=True)
def cleanup_sessions() -> dict[str, int]:
    """Periodic (beat): end idle sessions, purge history past retention."""
    return sessions.cleanup()


def _load(message_id: int) -> Message:
    message = Message.objects.select_related("session__avatar").get(pk=message_id)
    if message.session.is_ended:
        raise Ignore()  # the session ended while this waited in the queue
    return message


def _fail(task: Task, message: Message, exc: ProviderError, ref: str | None) -> None:
    """Retry a retryable failure with backoff; otherwise report it and stop the chain."""
    if exc.retryable and task.request.retries < len(RETRY_BACKOFF_S):
        raise task.retry(countdown=RETRY_BACKOFF_S[task.request.retries], exc=exc)
    message.error_code, message.error_message = exc.code, exc.message
    message.save(update_fields=["error_code", "error_message"])
    publish_sync(message.session_id, error(exc.code, exc.message, retryable=exc.retryable, ref=ref))
    sessions.finish_turn(message.session_id, task.request.id)
    raise Ignore()


def _local_copy(name: str) -> str:
    handle, path = tempfile.mkstemp(suffix=os.path.splitext(name)[1])
    with os.fdopen(handle, "wb") as out, default_storage.open(name, "rb") as src:
        out.write(src.read())
    return path


@shared_task(bind=True, max_retries=len(RETRY_BACKOFF_S))
def turn_transcribe(self: Task, message_id: int, *, session_id: str, ref: str | None = None) -> int:
    from chat.providers.registry import get_asr

    message = _load(message_id)
    step_started = time.perf_counter()
    path = _local_copy(message.audio)
    try:
        started = time.perf_counter()
        text = async_to_sync(get_asr().recognize_file)(
            path, message.audio_url, message.session.language
        )
        message.add_timing("asr_ms", (time.perf_counter() - started) * 1000)
    except ProviderError as exc:
        _fail(self, message, exc, ref)
    finally:
        os.unlink(path)
    message.text = text.strip()
    message.add_timing("transcribe_step_ms", (time.perf_counter() - step_started) * 1000)
    if not message.text:
        message.error_code, message.error_message = "ERR_ASR_FAILED", "no speech was recognised"
    message.save(update_fields=["text", "timings", "error_code", "error_message"])
    if message.error_code:
        publish_sync(session_id, error(message.error_code, message.error_message, ref=ref))
        sessions.finish_turn(session_id, self.request.id)
        raise Ignore()
    event = {
        "type": "asr_result",
        "text": message.text,
        "utterance_id": f"upload-{message.id}",
        "message_id": message.id,
    }
    publish_sync(session_id, {**event, "ref": ref} if ref else event)
    return message.id


def _request(
    message: Message, ref: str | None, *, speak: bool, user_message_id: int
) -> ReplyRequest:
    session, avatar = message.session, message.session.avatar
    return ReplyRequest(
        session_id=str(session.id),
        mode=session.mode,
        language=session.language,
        voice=avatar.voice if avatar else "",
        persona=avatar.persona if avatar else "",
        avatar_name=avatar.name if avatar else "",
        greeting=avatar.greeting if avatar else "",
        user_message_id=user_message_id,
        ref=ref,
        speak=speak,
    )


def _sender(session_id: str) -> Any:
    async def send(event: dict[str, Any]) -> None:
        await publish(session_id, event)

    return send


@shared_task(bind=True)
def turn_reply(self: Task, user_message_id: int, *, session_id: str, ref: str | None = None) -> int:
    """The avatar's answer, its deltas streamed to the client as the model writes."""
    user = _load(user_message_id)
    reply = Reply(
        _request(user, ref, speak=False, user_message_id=user.id), _sender(session_id), None
    )
    started = time.perf_counter()
    run_sync(reply.run())
    message = reply.message
    message.refresh_from_db()
    message.add_timing("reply_step_ms", (time.perf_counter() - started) * 1000)
    message.save(update_fields=["timings"])
    if message.error_code:
        sessions.finish_turn(session_id, self.request.id)
        raise Ignore()
    return message.id


@shared_task(bind=True)
def turn_synthesize(
    self: Task, reply_message_id: int, *, session_id: str, ref: str | None = None
) -> int:
    """Speech of the reply, stored for `tts_complete.audio_url`; video mode then renders."""
    message = _load(reply_message_id)
    reply = Reply(
        _request(message, ref, speak=True, user_message_id=message.reply_to_id or 0),
        _sender(session_id),
        None,
    )
    started = time.perf_counter()
    run_sync(reply.speak_message(message))
    message.refresh_from_db()
    message.add_timing("synthesize_step_ms", (time.perf_counter() - started) * 1000)
    message.save(update_fields=["timings"])
    sessions.finish_turn(session_id, self.request.id)
    return message.id
