"""The upload turn in a speech worker: transcribe → reply → synthesize (→ render in video mode),
run by one Celery task on the `speech` queue (chat.tasks.upload_turn).

One task rather than a chain of three: each hop between tasks (the publish, the worker's
receive, the hand-over to a pool process, the result backend) cost tens of milliseconds
(docs/benchmarks.md). The steps still report one by one: each publishes `turn_progress`
(started, done; redelivered, retrying, failed), records its timing on the chat history, and
fails with its stage's error code, ending the turn (the session stays usable).

A step whose pool process dies (SIGKILL, out of memory) is not lost: the task is acknowledged
late and requeued at once when its worker is lost, so each step must be safe to run again. The
redelivered task skips the steps that finished (a mark in Redis per step), and the step that was
running picks up what the lost run stored (the recognised text, the reply message, the stored
speech) and does not send again what the client already got. Deliveries are counted per step:
after CELERY_TASK_MAX_DELIVERIES deliveries that all lost their worker, the step fails with its
stage's error code (chat.deliveries).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

from asgiref.sync import async_to_sync
from celery import Task
from celery.exceptions import Ignore, Retry
from django.core.files.storage import default_storage

from chat import deliveries, inflight, observe, protocol, sessions
from chat.events import OrderedPublisher, publish_many, publish_sync, run_sync
from chat.models import ChatSession, Message, Role
from chat.protocol import Err, error
from chat.providers.base import ProviderError
from chat.providers.registry import get_asr
from chat.reply import Reply, ReplyRequest
from echoproject import logs, metrics

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (1, 4)

# The stage's error code of each step, by step name (turn_progress.step), in the turn's order.
STAGE_ERRORS = {
    "transcribe": Err.ASR_FAILED,
    "reply": Err.LLM_FAILED,
    "synthesize": Err.TTS_FAILED,
}


class TurnOver(Exception):
    """The turn ended before its last step: it failed and the client was told (or a lost run
    had already told it). `record`: whether the turn's record is still to be written."""

    def __init__(self, record: bool = True) -> None:
        super().__init__()
        self.record = record


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
    reply = _reply_of(user.pk)
    timings = {**user.timings, **(reply.timings if reply is not None else {})}
    code = user.error_code or (reply.error_code if reply is not None else "")
    observe.record_turn(session_id, turn_id, "upload", timings, code)


def _reply_of(user_message_id: int, **filters: Any) -> Message | None:
    replies = Message.objects.filter(reply_to_id=user_message_id, role=Role.ASSISTANT, **filters)
    return replies.order_by("id").last()


def step_message(step: str, message_id: int) -> Message | None:
    """The message that keeps a failed step's error: the user's utterance for transcribe,
    the reply (created if the step died before making it) for reply and synthesize."""
    message = Message.objects.filter(pk=message_id).first()
    if message is None or step == "transcribe":
        return message
    reply = _reply_of(message.pk)
    return reply or sessions.add_message(message.session_id, Role.ASSISTANT, reply_to_id=message.pk)


def fail_step(step: str, message_id: int, session_id: str, ref: str | None, text: str) -> None:
    """A step that cannot complete: keep the stage's error on the message and tell the client
    with the turn's ref (`message_id`: the turn's user message)."""
    code = STAGE_ERRORS[step]
    message = step_message(step, message_id)
    if message is not None and not message.error_code:
        message.error_code, message.error_message = code, text
        message.save(update_fields=["error_code", "error_message"])
    publish_sync(session_id, error(code, text, ref=ref))


def _publish_once(name: str, session_id: str, event: dict[str, Any], *, first: bool) -> None:
    """Publish an event unless a lost run of the step already did (at least once: a worker
    dying between the publish and the mark repeats it); `first`: this is the step's first
    delivery, so nothing can have gone out yet."""
    if not first and deliveries.done(name):
        return
    publish_sync(session_id, event)
    deliveries.mark_done(name)


def _local_copy(name: str) -> str:
    handle, path = tempfile.mkstemp(suffix=os.path.splitext(name)[1])
    with os.fdopen(handle, "wb") as out, default_storage.open(name, "rb") as src:
        out.write(src.read())
    return path


class UploadTurn:
    """One delivery of an upload turn's task: its steps in order, each reporting its progress."""

    def __init__(
        self,
        task: Task,
        message_id: int,
        session_id: str,
        ref: str | None,
        sent_at: float | None,
    ) -> None:
        self.task = task
        self.task_id: str = task.request.id
        self.message_id = message_id  # the user's utterance
        self.session_id = session_id
        self.ref = ref
        self.sent_at = sent_at
        self.user: Message | None = None
        self.reply: Message | None = None
        self.step = "transcribe"  # the step running, the one a failure is charged to
        self.delivery = 1  # of the running step
        self.record = True  # False when a lost run already recorded the turn
        self.publisher = OrderedPublisher(session_id)  # the replies' events, in order
        self._held: list[dict[str, Any]] = []  # progress events not sent yet

    def run(self) -> None:
        """All steps not finished yet; returns when the turn is over (done or failed)."""
        try:
            self.user = self._load()
            if self.ref is None:  # tasks sent before the ref was kept with the message had it
                self.ref = self.user.ref or None
            logs.bind(self.session_id, self.user.id)
            steps: dict[str, Callable[[], None]] = {
                "transcribe": self.transcribe,
                "reply": self.reply_step,
                "synthesize": self.synthesize,
            }
            for name, body in steps.items():
                self._run_step(name, body)
        except TurnOver as over:
            self.record = self.record and over.record
        except (Ignore, Retry):
            raise
        except Exception as exc:  # a bug, or a soft time limit: the stage's code, then raise
            self._report_failure(f"the {self.step} step failed ({exc.__class__.__name__})")
            self._finish()
            raise
        self._finish()

    def _finish(self) -> None:
        # no longer in flight before the client hears the last step: a session stopped right
        # after that must not terminate this task before it records the turn
        inflight.finish_turn(self.session_id, self.task_id)
        self._flush_progress()
        if self.record:
            record_upload_turn(self.session_id, self.message_id)

    def _report_failure(self, text: str) -> None:
        self._progress("failed")
        fail_step(self.step, self.message_id, self.session_id, self.ref, text)

    def _step_subject(self) -> int:
        """The message a step's progress names: the user's, the reply's for synthesize."""
        if self.step == "synthesize" and self.reply is not None:
            return self.reply.id
        return self.message_id

    def _load(self) -> Message:
        message = Message.objects.select_related("session__avatar").filter(pk=self.message_id)
        found = message.first()
        if found is None or found.session.is_ended:
            raise Ignore()  # the session ended (its history maybe deleted) while this waited
        return found

    def _run_step(self, name: str, body: Callable[[], None]) -> None:
        """One step with its progress events, unless a lost run had finished it."""
        self.step = name
        request = self.task.request
        number, finished = deliveries.step_delivery(self.task_id, name, request.retries or 0)
        if finished:
            return
        if (
            name != "transcribe"
            and not ChatSession.objects.filter(pk=self.session_id, ended_at__isnull=True).exists()
        ):
            raise Ignore()  # stopped meanwhile: the revocation may not have reached us
        self.delivery = number
        if name == "synthesize" and self.reply is None:
            self.reply = _reply_of(self.message_id)
        if deliveries.exhausted(number):
            self._report_failure(
                f"the {name} step lost its worker {number - 1} times and was given up"
            )
            raise TurnOver()
        if number > 1:
            self._progress("redelivered", attempt=number, **self._restarted_reply())
        self._progress("started")
        body()
        self._progress("done")
        deliveries.finish_step(self.task_id, name)

    def _progress(self, state: str, **extra: Any) -> None:
        """A `turn_progress` of the running step. `done` waits to go out with what follows
        (the next step's `started`, or the turn's end): one channel-layer send for both."""
        event = protocol.event(
            "turn_progress",
            self.ref,
            step=self.step,
            state=state,
            task_id=self.task_id,
            message_id=self._step_subject(),
            **extra,
        )
        self._held.append(event)
        if state != "done":
            self._flush_progress()

    def _flush_progress(self) -> None:
        if self._held:
            events, self._held = self._held, []
            run_sync(publish_many(self.session_id, events), timeout=30)

    def _restarted_reply(self) -> dict[str, Any]:
        """For a redelivered reply step: the reply the lost run had begun (and maybe streamed
        deltas of), which starts again from its beginning; the client clears its text."""
        if self.step != "reply":
            return {}
        reply = _reply_of(self.message_id, text="", error_code="")
        return {"reply_message_id": reply.id} if reply is not None else {}

    def _request(self, *, speak: bool) -> ReplyRequest:
        session = self.user.session
        return ReplyRequest.of(
            self.session_id,
            session.mode,
            session.language,
            session.avatar,
            self.message_id,
            self.ref,
            speak=speak,
            kind="upload",
        )

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a reply's coroutine on the process's event loop; its events have all gone out
        when this returns."""

        async def flushed() -> None:
            try:
                await work
            finally:
                await self.publisher.flush()

        run_sync(flushed())

    # --- the steps ----------------------------------------------------------------------------
    def transcribe(self) -> None:
        message = self.user
        if message.error_code:  # a lost run already failed the turn and told the client
            raise TurnOver(record=False)
        if not message.text:  # else a lost run recognised and stored it already
            if self.sent_at is not None and "queue_ms" not in message.timings:
                message.add_timing("queue_ms", max(0.0, time.time() - self.sent_at) * 1000)
            step_started = time.perf_counter()
            path = _local_copy(message.audio)
            try:
                started = time.perf_counter()
                text = async_to_sync(get_asr().recognize_file)(
                    path, message.audio_url, message.session.language
                )
                message.add_timing("asr_ms", (time.perf_counter() - started) * 1000)
            except ProviderError as exc:
                self._provider_failed(message, exc)
            finally:
                os.unlink(path)
            message.text = text.strip()
            message.add_timing("transcribe_step_ms", (time.perf_counter() - step_started) * 1000)
            if not message.text:
                message.error_code = Err.ASR_FAILED
                message.error_message = "no speech was recognised"
            message.save(update_fields=["text", "timings", "error_code", "error_message"])
        if message.error_code:
            publish_sync(
                self.session_id, error(message.error_code, message.error_message, ref=self.ref)
            )
            raise TurnOver()
        event = protocol.asr_result(message.text, f"upload-{message.id}", message.id, self.ref)
        name = f"asr_result:{message.id}"
        _publish_once(name, self.session_id, event, first=self.delivery == 1)

    def _provider_failed(self, message: Message, exc: ProviderError) -> None:
        """Retry a retryable failure with backoff (the task again, from this step); otherwise
        report it and end the turn."""
        metrics.provider_error(exc.code)
        retries = self.task.request.retries or 0
        if exc.retryable and retries < len(RETRY_BACKOFF_S):
            self._progress("retrying")
            raise self.task.retry(countdown=RETRY_BACKOFF_S[retries], exc=exc)
        message.error_code, message.error_message = exc.code, exc.message
        message.save(update_fields=["error_code", "error_message"])
        publish_sync(
            self.session_id, error(exc.code, exc.message, retryable=exc.retryable, ref=self.ref)
        )
        raise TurnOver()

    def reply_step(self) -> None:
        """The avatar's answer, its deltas streamed to the client as the model writes.

        Redelivered after a lost run, the step reuses the reply message that run created: a
        finished reply (its text is stored after `text_response` went out) is not produced
        again; an unfinished one is produced again from the start under the same message id.
        """
        earlier = _reply_of(self.message_id) if self.delivery > 1 else None
        if earlier is not None and (earlier.text or earlier.error_code):
            if earlier.error_code:  # the lost run failed the turn and told the client
                raise TurnOver(record=False)
            self.reply = earlier
            return
        reply = Reply(self._request(speak=False), self.publisher.send, None)
        reply.message = earlier
        started = time.perf_counter()
        self._run(reply.run())
        message = reply.message
        message.add_timing("reply_step_ms", (time.perf_counter() - started) * 1000)
        message.save(update_fields=["timings"])
        self.reply = message
        if message.error_code:
            raise TurnOver()

    def synthesize(self) -> None:
        """Speech of the reply, stored for `tts_complete.audio_url`; video mode then renders.

        Redelivered after a lost run that had stored the speech (`tts_complete` went out before
        the store), the step only hands the reply to rendering if that run had not.
        """
        message = self.reply
        if message is None or message.error_code:
            raise TurnOver(record=False)
        reply = Reply(self._request(speak=True), self.publisher.send, None)
        if message.audio:
            if self.user.session.mode == "video" and not message.render_task_id:
                reply.message = message
                self._run(reply.render())
            self.record = False  # the lost run recorded the turn
            return
        started = time.perf_counter()
        self._run(reply.speak_message(message))
        message.refresh_from_db()
        message.add_timing("synthesize_step_ms", (time.perf_counter() - started) * 1000)
        message.save(update_fields=["timings"])
