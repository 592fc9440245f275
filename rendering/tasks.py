"""Celery tasks of the render workers.

render_video is acknowledged late and requeued when its worker dies, so it may run twice:
its files have fixed names (a second run overwrites them), progress never goes back, each
segment is announced once and `video_ready` is published once per message. A render whose
worker was lost CELERY_TASK_MAX_DELIVERIES times (one that kills its worker every time) fails
with ERR_RENDER_FAILED instead of being redelivered again (chat.deliveries).
"""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_failure, worker_process_init
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import DatabaseError, close_old_connections

from avatars.models import Avatar
from avatars.voices import speaking_voice
from chat import deliveries, limits, protocol
from chat.events import publish_sync
from chat.models import Message
from chat.protocol import Err, error
from chat.providers.text import split_sentences
from chat.providers.tts.espeak import espeak_parameters, espeak_voice
from chat.storage import public_url, save_for_session
from echoproject import logs, metrics
from rendering import coordination, heartbeat, idle
from rendering.backends import get_backend
from rendering.backends.base import RenderCancelled, RenderError
from rendering.backends.phonemes import Phone, espeak_alignment
from rendering.outputs import delete_outputs, segment_name, video_name
from rendering.progress import ProgressReporter

log = logging.getLogger(__name__)

MAX_RETRIES = 2
PREPARE_AT_START = 8  # avatars a render process prepares when it starts (lite keeps 8)
TRANSIENT = (OSError, DatabaseError, ConnectionError, redis.RedisError)


@shared_task(bind=True)
def worker_info(self: Task) -> dict[str, Any]:
    """What the render worker that ran this is: node, queue it came from, torch device."""
    import torch

    return {
        "hostname": self.request.hostname,
        "routing_key": (self.request.delivery_info or {}).get("routing_key"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


@worker_process_init.connect
def warm_up_backend(sender: Any = None, **kwargs: Any) -> None:
    """Load the backend's models when a render process starts, in a thread so the process
    start is not blocked; the first task waits for it (get_backend holds a lock)."""
    if heartbeat.is_render_worker():
        args = (str(sender or "local"),)
        threading.Thread(
            target=_load_backend, args=args, name="render-warm-up", daemon=True
        ).start()


def _load_backend(nodename: str) -> None:
    try:
        backend = get_backend()
    except RenderError as exc:  # every task will fail with this line too
        log.error("render backend cannot start: %s", exc.message)
        return
    except Exception:
        log.exception("render backend failed to load")
        return
    coordination.note_device(nodename, backend.device, backend.name)
    if not settings.RENDER_PREPARE_AVATARS:
        return
    try:
        avatars = list(Avatar.objects.enabled().exclude(image="").order_by("-updated_at"))
    except DatabaseError as exc:  # the avatars are prepared on their first reply instead
        log.warning("could not list the avatars to prepare: %s", exc)
        avatars = []
    try:
        for avatar in avatars[:PREPARE_AT_START]:
            _prepare_logged(avatar, nodename)
    finally:
        close_old_connections()  # this thread's database connection


@shared_task(bind=True, ignore_result=True)
def prepare_avatar(self: Task, avatar_id: int) -> str:
    """Prepare an avatar on this worker (sent to every render worker when it is saved): the
    backend's per-portrait work, and the idle loop when storage has none for its portrait."""
    avatar = Avatar.objects.filter(pk=avatar_id).first()
    if avatar is None or not avatar.image:
        return "missing"
    return _prepare_logged(avatar, self.request.hostname or "local")


def _prepare_logged(avatar: Avatar, nodename: str) -> str:
    """_prepare, with a failure logged in one line: the avatar's first reply does the work."""
    try:
        return _prepare(avatar, nodename)
    except RenderError as exc:
        log.warning("avatar %s not prepared: %s", avatar.pk, exc.message)
    except Exception:
        log.exception("avatar %s not prepared", avatar.pk)
    return "failed"


def _prepare(avatar: Avatar, nodename: str) -> str:
    backend = get_backend()
    kwargs: dict[str, Any] = {
        "mouth": (avatar.mouth_x, avatar.mouth_y),
        "face": getattr(avatar, "face", None) or None,
    }
    name = idle.idle_name(avatar)
    lock = f"{coordination.PREFIX}idle-making:{name}"
    with tempfile.TemporaryDirectory(prefix=f"prepare-{avatar.pk}-") as tmp:
        image = _copy_from_storage(avatar.image.name, Path(tmp), "the avatar image")
        if backend.prepare(image, **kwargs):
            coordination.note_warm(nodename, avatar.pk)
        if default_storage.exists(name) or not coordination.client().set(
            lock, "1", nx=True, ex=120
        ):
            return "prepared"  # the clip is there, or another worker is making it
        try:
            started = time.perf_counter()
            clip = backend.idle_clip(image, Path(tmp) / "idle.mp4", **kwargs)
            if clip is None:
                return "prepared"
            with clip.open("rb") as handle:
                stored = default_storage.save(name, File(handle))
            idle.delete_clips(avatar.pk, keep=stored)
            log.info(
                "idle loop of avatar %s made in %.0f ms: %s",
                avatar.pk,
                (time.perf_counter() - started) * 1000,
                stored,
            )
        finally:
            coordination.client().delete(lock)
    return "made"


def _copy_from_storage(name: str, into: Path, what: str) -> Path:
    if not name or not default_storage.exists(name):
        raise RenderError(f"{what} is missing ({name or 'no file'})")
    target = into / Path(name).name
    with default_storage.open(name, "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES)
def render_video(
    self: Task, message_id: int, ref: str | None = None, sent_at: float | None = None
) -> dict[str, Any]:
    """Render the talking-head video of an assistant message, publishing as it goes; the turn's
    ref (for the client to match an error to what it sent) is read off the turn's user message,
    `ref` is only taken from renders sent before; `sent_at` when the task was sent
    (time.time()), for its queue wait."""
    queue_s = max(0.0, time.time() - sent_at) if sent_at is not None else None
    task_id: str = self.request.id
    message = (
        Message.objects.select_related("session__avatar", "reply_to").filter(pk=message_id).first()
    )
    if message is None:
        log.warning("render %s: message %s does not exist", task_id, message_id)
        return {"status": "missing"}
    session = message.session
    if ref is None:  # renders sent before the ref was kept with the message had it
        ref = _turn_ref(message)
    logs.bind(session.id, message.reply_to_id or message.id)
    if session.ended_at is not None or coordination.is_cancelled(task_id):
        delete_outputs(session.id, message_id)
        return {"status": "cancelled"}
    if coordination.done_before(f"ready:{message_id}"):
        return {"status": "done"}  # a redelivery after the video was already announced
    number = deliveries.delivery(self.request)
    if deliveries.exhausted(number):
        text = f"the render worker was lost {number - 1} times rendering this video"
        return _fail(message, task_id, text, False, ref)
    started = time.perf_counter()
    report = ProgressReporter(session.id, task_id)
    if number > 1:
        report.redelivered(number)
    report(0, "started")
    workdir = Path(tempfile.mkdtemp(prefix=f"render-{message_id}-"))
    try:
        result = _render(self, message, task_id, workdir, report)
    except RenderCancelled:
        delete_outputs(session.id, message_id)
        return {"status": "cancelled"}
    except SoftTimeLimitExceeded:
        if coordination.is_cancelled(task_id) or _session_ended(message):
            delete_outputs(session.id, message_id)
            return {"status": "cancelled"}
        return _fail(message, task_id, "the video took too long to render", True, ref)
    except RenderError as exc:
        if exc.retryable and self.request.retries < MAX_RETRIES:
            raise self.retry(countdown=2 ** (self.request.retries + 1)) from exc
        return _fail(message, task_id, exc.message, exc.retryable, ref)
    except TRANSIENT as exc:
        if self.request.retries < MAX_RETRIES:
            log.warning("render %s: %s, retrying", task_id, exc)
            raise self.retry(countdown=2 ** (self.request.retries + 1)) from exc
        return _fail(message, task_id, f"rendering failed: {exc}", True, ref)
    except Exception as exc:
        log.exception("render %s failed", task_id)
        return _fail(message, task_id, f"rendering failed: {exc.__class__.__name__}", False, ref)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if result is None:
        delete_outputs(session.id, message_id)
        return {"status": "cancelled"}
    name, duration_ms = result
    elapsed_ms = (time.perf_counter() - started) * 1000
    message = Message.objects.get(pk=message_id)  # the timings other stages wrote meanwhile
    message.video, message.duration_ms = name, duration_ms
    message.add_timing("render", elapsed_ms)
    if queue_s is not None and number == 1:
        message.add_timing("render_queue_ms", queue_s * 1000)
        metrics.stage("queue_wait", "render", queue_s)
    message.save(update_fields=["video", "duration_ms", "timings"])
    metrics.render_speed(elapsed_ms / 1000, duration_ms / 1000)
    log.info(
        "render of message %s done: render=%.1f ms for %d ms of video (%.2f x real time)",
        message_id,
        elapsed_ms,
        duration_ms,
        elapsed_ms / duration_ms if duration_ms else 0.0,
        extra={"stages": {"render_ms": round(elapsed_ms, 1), "duration_ms": duration_ms}},
    )
    report(100, "done")
    if coordination.once(f"ready:{message_id}", task_id):
        limits.add_for_session(limits.VIDEO, session.id, duration_ms / 1000)  # counted once
        publish_sync(
            session.id,
            protocol.event(
                "video_ready",
                None,
                task_id=task_id,
                video_url=public_url(name),
                duration_ms=duration_ms,
            ),
        )
    return {"status": "done", "video": name, "duration_ms": duration_ms}


def _session_ended(message: Message) -> bool:
    """Ended, or gone with its history (SESSION_RETENTION=end)."""
    return not Message.objects.filter(pk=message.pk, session__ended_at__isnull=True).exists()


def _render(
    task: Task, message: Message, task_id: str, workdir: Path, report: ProgressReporter
) -> tuple[str, int] | None:
    """Run the backend; store segments and the whole. None when the session ended meanwhile."""
    session, avatar = message.session, message.session.avatar
    if avatar is None or not avatar.image:
        raise RenderError("the session's avatar has no reference image")
    image = _copy_from_storage(avatar.image.name, workdir, "the avatar image")
    audio = _copy_from_storage(message.audio, workdir, "the reply audio")
    backend = get_backend()
    nodename = task.request.hostname or "local"
    coordination.note_device(nodename, backend.device, backend.name)
    coordination.note_warm(nodename, avatar.pk)

    def cancelled() -> bool:
        return coordination.is_cancelled(task_id)

    def on_segment(path: Path, index: int, start_ms: int, duration_ms: int) -> None:
        with path.open("rb") as handle:
            name = save_for_session(session.id, segment_name(message.pk, index), File(handle))
        if name is None or cancelled():
            raise RenderCancelled()
        if coordination.client().sadd(f"{coordination.PREFIX}segments:{message.pk}", index):
            coordination.client().expire(
                f"{coordination.PREFIX}segments:{message.pk}", coordination.DONE_TTL_S
            )
            publish_sync(
                session.id,
                protocol.event(
                    "video_segment",
                    None,
                    task_id=task_id,
                    index=index,
                    url=public_url(name),
                    start_ms=start_ms,
                    duration_ms=duration_ms,
                ),
            )

    extra: dict[str, Any] = {}
    if backend.uses_phonemes:
        extra["phonemes"] = _espeak_phonemes(message, audio)
    result = backend.render(
        image,
        audio,
        workdir / "out",
        report,
        on_segment,
        cancelled,
        mouth=(avatar.mouth_x, avatar.mouth_y),
        face=getattr(avatar, "face", None) or None,
        **extra,
    )
    if cancelled():
        raise RenderCancelled()
    with result.video.open("rb") as handle:
        name = save_for_session(session.id, video_name(message.pk), File(handle))
    return (name, result.duration_ms) if name else None


def _espeak_phonemes(message: Message, audio: Path) -> list[Phone] | None:
    """The reply's phonemes with their times when its audio is the offline TTS speaking its
    text (checked against the stored audio by phonemes.espeak_alignment), else None: visemes
    then come from the audio itself."""
    if settings.TTS_BACKEND != "espeak" or not message.text.strip():
        return None
    session, avatar = message.session, message.session.avatar
    language = session.language or (avatar.language if avatar else "")
    spoken = speaking_voice(avatar)  # the avatar's espeak-ng voice, speed and pitch
    voice = espeak_voice(spoken.espeak or spoken.preset, language)
    speed, pitch = espeak_parameters(spoken)
    try:
        return espeak_alignment(audio, split_sentences(message.text), voice, speed, pitch)
    except Exception:  # a missing library or odd text: the audio-driven visemes still work
        log.warning("no phoneme timing for message %s", message.pk, exc_info=True)
        return None


@task_failure.connect
def on_render_failure(
    sender: Any = None,
    task_id: str = "",
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **extra: Any,
) -> None:
    """A render ended by what render_video cannot catch (its hard time limit kills the pool
    process): the client still gets ERR_RENDER_FAILED and the message keeps it."""
    if getattr(sender, "name", "") != render_video.name or not args:
        return
    message = Message.objects.filter(pk=args[0]).first()
    if message is None or message.error_code or message.video:
        return
    reason = exception.__class__.__name__ if exception is not None else "an error"
    ref = (kwargs or {}).get("ref") or _turn_ref(message)
    _fail(message, task_id, f"rendering failed ({reason})", True, ref)


def _turn_ref(message: Message) -> str | None:
    """The client's id of the turn an assistant message answers, for its events."""
    user = message.reply_to
    return (user.ref or None) if user is not None else None


def _fail(
    message: Message, task_id: str, text: str, retryable: bool, ref: str | None = None
) -> dict[str, Any]:
    log.warning("render %s of message %s failed: %s", task_id, message.pk, text)
    Message.objects.filter(pk=message.pk).update(
        error_code=Err.RENDER_FAILED, error_message=text[:2000]
    )
    delete_outputs(message.session_id, message.pk)
    publish_sync(message.session_id, error(Err.RENDER_FAILED, text, retryable=retryable, ref=ref))
    return {"status": "failed", "error": text}
