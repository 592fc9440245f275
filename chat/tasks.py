"""Celery tasks of the speech workers (queue `speech`): the upload turn's chain and cleanup.

Each step takes IDs, records its result and timing on the chat history, and publishes its
protocol events to the session's group. A failing step publishes the stage's error code, keeps
the error on the message and stops the chain (the session stays usable for the next turn).

A step whose pool process dies (SIGKILL, out of memory) is not lost: the steps are acknowledged
late and requeued at once when their worker is lost, so each one must be safe to run again. A
redelivered step picks up what the lost run stored (the recognised text, the reply message, the
stored speech) and does not send again what the client already got; after
CELERY_TASK_MAX_DELIVERIES deliveries that all lost their worker the step fails with its stage's
error code (chat.deliveries).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

from asgiref.sync import async_to_sync
from celery import Task, shared_task
from celery.exceptions import Ignore
from django.core.files.storage import default_storage

from chat import deliveries, observe, protocol, sessions
from chat.events import publish, publish_sync, run_sync
from chat.models import Message, Role
from chat.protocol import Err, error
from chat.providers.base import ProviderError
from chat.providers.registry import get_asr
from chat.reply import Reply, ReplyRequest
from echoproject import logs, metrics

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (1, 4)

# The stage's error code of each step of the upload chain, by step name (turn_progress.step).
STAGE_ERRORS = {
    "transcribe": Err.ASR_FAILED,
    "reply": Err.LLM_FAILED,
    "synthesize": Err.TTS_FAILED,
}

# Acknowledged when done, requeued when the pool process running it dies (see the module doc).
STEP = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}


@shared_task(ignore_result=True)
def cleanup_sessions() -> dict[str, int]:
    """Periodic (beat): end idle sessions, purge history past retention."""
    return sessions.cleanup()


def _load(message_id: int) -> Message:
    message = Message.objects.select_related("session__avatar").filter(pk=message_id).first()
    if message is None or message.session.is_ended:
        raise Ignore()  # the session ended (its history maybe deleted) while this waited
    return message


def _begin(task: Task, step: str, message_id: int, session_id: str, ref: str | None) -> Message:
    """The step's message; a delivery past the bound fails the step instead of running it."""
    message = _load(message_id)
    logs.bind(session_id, turn_of(message))
    number = deliveries.delivery(task.request)
    if deliveries.exhausted(number):
        from chat.signals import publish_progress  # local: chat.signals imports this module

        publish_progress(step, "failed", task.request.id, session_id, message_id, ref)
        fail_step(
            step,
            message_id,
            session_id,
            ref,
            task.request.id,
            f"the {step} step lost its worker {number - 1} times and was given up",
        )
        raise Ignore()
    return message


def turn_of(message: Message) -> int:
    """The turn's id: its user message's (a reply names the message it answers)."""
    if message.role == Role.ASSISTANT and message.reply_to_id:
        return message.reply_to_id
    return message.id


def record_upload_turn(session_id: str, turn_id: int) -> None:
    """The upload turn is over (done or failed): its log line and metrics, from what its
    messages recorded."""
    user = Message.objects.filter(pk=turn_id).first()
    if user is None:
        return
    reply = Message.objects.filter(reply_to=user, role=Role.ASSISTANT).order_by("id").last()
    timings = {**user.timings, **(reply.timings if reply is not None else {})}
    code = user.error_code or (reply.error_code if reply is not None else "")
    observe.record_turn(session_id, turn_id, "upload", timings, code)


def step_message(step: str, message_id: int) -> Message | None:
    """The message that keeps a failed step's error: the user's utterance for transcribe,
    the reply (created if the step died before making it) for reply and synthesize."""
    message = Message.objects.filter(pk=message_id).first()
    if message is None or step != "reply":
        return message
    reply = Message.objects.filter(reply_to=message, role=Role.ASSISTANT).order_by("id").last()
    return reply or sessions.add_message(message.session_id, Role.ASSISTANT, reply_to_id=message.pk)


def fail_step(
    step: str,
    message_id: int,
    session_id: str,
    ref: str | None,
    task_id: str,
    text: str,
    *,
    retryable: bool = False,
) -> None:
    """A step that cannot complete: keep the stage's error on the message, tell the client with
    the turn's ref, and end the turn (the session stays usable)."""
    code = STAGE_ERRORS[step]
    message = step_message(step, message_id)
    if message is not None and not message.error_code:
        message.error_code, message.error_message = code, text
        message.save(update_fields=["error_code", "error_message"])
    publish_sync(session_id, error(code, text, retryable=retryable, ref=ref))
    sessions.finish_turn(session_id, task_id)
    if message is not None:
        record_upload_turn(session_id, turn_of(message))


def _publish_once(name: str, session_id: str, event: dict[str, Any]) -> None:
    """Publish an event unless a lost run of the step already did (at least once: a worker
    dying between the publish and the mark repeats it)."""
    if deliveries.done(name):
        return
    publish_sync(session_id, event)
    deliveries.mark_done(name)


def _fail(task: Task, message: Message, exc: ProviderError, ref: str | None) -> None:
    """Retry a retryable failure with backoff; otherwise report it and stop the chain."""
    metrics.provider_error(exc.code)
    if exc.retryable and task.request.retries < len(RETRY_BACKOFF_S):
        raise task.retry(countdown=RETRY_BACKOFF_S[task.request.retries], exc=exc)
    message.error_code, message.error_message = exc.code, exc.message
    message.save(update_fields=["error_code", "error_message"])
    publish_sync(message.session_id, error(exc.code, exc.message, retryable=exc.retryable, ref=ref))
    sessions.finish_turn(message.session_id, task.request.id)
    record_upload_turn(str(message.session_id), message.id)
    raise Ignore()


def _local_copy(name: str) -> str:
    handle, path = tempfile.mkstemp(suffix=os.path.splitext(name)[1])
    with os.fdopen(handle, "wb") as out, default_storage.open(name, "rb") as src:
        out.write(src.read())
    return path


@shared_task(**STEP, max_retries=len(RETRY_BACKOFF_S))
def turn_transcribe(
    self: Task,
    message_id: int,
    *,
    session_id: str,
    ref: str | None = None,
    sent_at: float | None = None,
) -> int:
    """`sent_at`: when the upload's chain was sent (time.time()), for the queue wait."""
    message = _begin(self, "transcribe", message_id, session_id, ref)
    if message.error_code:  # a lost run already failed the turn and told the client
        sessions.finish_turn(session_id, self.request.id)
        raise Ignore()
    if not message.text:  # else a lost run recognised and stored it already
        if sent_at is not None and "queue_ms" not in message.timings:
            message.add_timing("queue_ms", max(0.0, time.time() - sent_at) * 1000)
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
            message.error_code = Err.ASR_FAILED
            message.error_message = "no speech was recognised"
        message.save(update_fields=["text", "timings", "error_code", "error_message"])
    if message.error_code:
        publish_sync(session_id, error(message.error_code, message.error_message, ref=ref))
        sessions.finish_turn(session_id, self.request.id)
        record_upload_turn(session_id, message.id)
        raise Ignore()
    event = protocol.asr_result(message.text, f"upload-{message.id}", message.id, ref)
    _publish_once(f"asr_result:{message.id}", session_id, event)
    return message.id


def _request(
    message: Message, ref: str | None, *, speak: bool, user_message_id: int
) -> ReplyRequest:
    session, avatar = message.session, message.session.avatar
    return ReplyRequest.of(
        str(session.id),
        session.mode,
        session.language,
        avatar,
        user_message_id,
        ref,
        speak=speak,
        kind="upload",
    )


def _sender(session_id: str) -> Any:
    async def send(event: dict[str, Any]) -> None:
        await publish(session_id, event)

    return send


@shared_task(**STEP)
def turn_reply(self: Task, user_message_id: int, *, session_id: str, ref: str | None = None) -> int:
    """The avatar's answer, its deltas streamed to the client as the model writes.

    Redelivered after a lost run, the step reuses the reply message that run created: a
    finished reply (its text is stored after `text_response` went out) is not produced again;
    an unfinished one is produced again from the start under the same message id.
    """
    user = _begin(self, "reply", user_message_id, session_id, ref)
    earlier = (
        Message.objects.filter(reply_to=user, role=Role.ASSISTANT).order_by("id").last()
        if deliveries.delivery(self.request) > 1
        else None
    )
    if earlier is not None and (earlier.text or earlier.error_code):
        if earlier.error_code:  # the lost run failed the turn and told the client
            sessions.finish_turn(session_id, self.request.id)
            raise Ignore()
        return earlier.id
    reply = Reply(
        _request(user, ref, speak=False, user_message_id=user.id), _sender(session_id), None
    )
    reply.message = earlier
    started = time.perf_counter()
    run_sync(reply.run())
    message = reply.message
    message.refresh_from_db()
    message.add_timing("reply_step_ms", (time.perf_counter() - started) * 1000)
    message.save(update_fields=["timings"])
    if message.error_code:
        sessions.finish_turn(session_id, self.request.id)
        record_upload_turn(session_id, user.id)
        raise Ignore()
    return message.id


@shared_task(**STEP)
def turn_synthesize(
    self: Task, reply_message_id: int, *, session_id: str, ref: str | None = None
) -> int:
    """Speech of the reply, stored for `tts_complete.audio_url`; video mode then renders.

    Redelivered after a lost run that had stored the speech (`tts_complete` went out before
    the store), the step only hands the reply to rendering if that run had not.
    """
    message = _begin(self, "synthesize", reply_message_id, session_id, ref)
    reply = Reply(
        _request(message, ref, speak=True, user_message_id=message.reply_to_id or 0),
        _sender(session_id),
        None,
    )
    if message.error_code:
        sessions.finish_turn(session_id, self.request.id)
        raise Ignore()
    if message.audio:
        if message.session.mode == "video" and not message.task_id:
            reply.message = message
            run_sync(reply.render())
        sessions.finish_turn(session_id, self.request.id)
        return message.id
    started = time.perf_counter()
    run_sync(reply.speak_message(message))
    message.refresh_from_db()
    message.add_timing("synthesize_step_ms", (time.perf_counter() - started) * 1000)
    message.save(update_fields=["timings"])
    sessions.finish_turn(session_id, self.request.id)
    record_upload_turn(session_id, turn_of(message))
    return message.id
