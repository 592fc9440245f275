"""The upload turn: one recorded utterance (a binary frame or an HTTP upload) is decoded,
stored under the session's prefix and answered by a Celery chain on the `speech` queue:
transcribe → reply → synthesize (→ render in video mode).

The decoding runs in a process of its own, not a thread: PyAV's Python-level loop over the
frames (30–130 ms of CPU for a few seconds of WAV or WebM/Opus) held the GIL in 5 ms slices
against the event loop serving every session of the web process, and with 1000 sessions
pinging their latency tail grew with every upload (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
import time
import uuid
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from celery import chain
from channels.db import database_sync_to_async
from django.conf import settings
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from chat import limits, sessions
from chat.audio import TARGET_RATE, AudioInvalid, decode_upload, lower_priority, pcm_to_wav
from chat.models import ChatSession, Message
from chat.protocol import Err
from chat.storage import public_url, save_for_session

log = logging.getLogger(__name__)


class UploadRefused(Exception):
    def __init__(self, code: Err, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_decoder: ProcessPoolExecutor | None = None
_decoder_lock = threading.Lock()


def _decoder_pool(renew: bool = False) -> ProcessPoolExecutor:
    """The decoding process of this process, started on first use (spawned: forking a
    process that runs threads and an event loop is unsafe); `renew` replaces it."""
    global _decoder
    with _decoder_lock:
        if renew and _decoder is not None:
            _decoder.shutdown(wait=False, cancel_futures=True)
            _decoder = None
        if _decoder is None:
            _decoder = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=lower_priority,
                initargs=(settings.WORKER_NICE,),
            )
        return _decoder


def _check_size(data: bytes) -> None:
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise UploadRefused(
            Err.TOO_LARGE, f"uploads are limited to {settings.MAX_UPLOAD_BYTES} bytes"
        )


def _submit(data: bytes, renew: bool) -> Future[bytes]:
    try:
        return _decoder_pool(renew).submit(decode_upload, data, settings.MAX_AUDIO_SECONDS)
    except BrokenProcessPool:  # it died since its last decoding: a new one
        return _decoder_pool(renew=True).submit(decode_upload, data, settings.MAX_AUDIO_SECONDS)


def _outcome(future: Future[bytes]) -> bytes:
    try:
        return future.result()
    except AudioInvalid as exc:
        raise UploadRefused(Err.AUDIO_INVALID, str(exc)) from None


UNDECODABLE = "not a decodable audio file (the decoder stopped on it)"


def check_and_decode(data: bytes) -> bytes:
    """Size and format checks; the 16 kHz PCM of the utterance, or UploadRefused. A file
    that kills the decoding process twice is refused as undecodable (the web process lives)."""
    _check_size(data)
    for renew in (False, True):
        try:
            return _outcome(_submit(data, renew))
        except BrokenProcessPool:
            continue
    raise UploadRefused(Err.AUDIO_INVALID, UNDECODABLE)


async def check_and_decode_async(data: bytes) -> bytes:
    """check_and_decode without holding a thread (or the GIL) while the decoding runs."""
    _check_size(data)
    for renew in (False, True):
        future = _submit(data, renew)
        with contextlib.suppress(Exception):  # its outcome is read (and raised) just below
            await asyncio.wrap_future(future)
        try:
            return _outcome(future)
        except BrokenProcessPool:
            continue
    raise UploadRefused(Err.AUDIO_INVALID, UNDECODABLE)


def accept_upload(session_id: uuid.UUID | str, pcm: bytes, ref: str | None) -> Message:
    """Store the normalised utterance, record the user message, start the chain; raises
    limits.Limited when the session's user or address has reached a limit (chat.limits)."""
    from chat.tasks import turn_reply, turn_synthesize, turn_transcribe

    who = limits.subject_of(session_id) or ""
    video = ChatSession.objects.filter(pk=session_id, mode="video").exists()
    limits.admit_turn(who, audio=True, video=video)
    limits.add(limits.AUDIO, who, len(pcm) / (2 * TARGET_RATE))
    message = sessions.add_message(session_id, sessions.USER)
    name = save_for_session(
        session_id, f"audio/user-{message.id}.wav", pcm_to_wav(pcm, TARGET_RATE)
    )
    if name is None:
        raise UploadRefused(Err.STATE, "the session has ended")
    message.audio, message.audio_url = name, public_url(name)
    message.duration_ms = len(pcm) * 1000 // (2 * TARGET_RATE)
    options: dict[str, Any] = {"session_id": str(session_id), "ref": ref}
    steps = [
        turn_transcribe.s(message.id, **options, sent_at=time.time()).set(task_id=uuid.uuid4().hex),
        turn_reply.s(**options).set(task_id=uuid.uuid4().hex),
        turn_synthesize.s(**options).set(task_id=uuid.uuid4().hex),
    ]
    ids = [step.id for step in steps]
    message.task_id = ids[0]
    message.save(update_fields=["audio", "audio_url", "duration_ms", "task_id"])
    sessions.stop_turn(session_id)  # a new utterance supersedes the turn in flight
    sessions.set_turn(session_id, ids)
    chain(*steps).apply_async()
    log.info(
        "upload turn %s sent to the speech workers",
        message.id,
        extra={"session_id": str(session_id), "turn_id": str(message.id)},
    )
    return message


async def start_upload_turn(consumer: Any, data: bytes, ref: str | None) -> None:
    try:
        pcm = await check_and_decode_async(data)
        await consumer.interrupt()
        await database_sync_to_async(accept_upload)(consumer.session_id, pcm, ref)
    except UploadRefused as exc:
        await consumer.send_error(exc.code, exc.message, ref=ref)
    except limits.Limited as exc:
        await consumer.send_error(
            Err.RATE_LIMITED, exc.message, retryable=True, ref=ref, **exc.fields()
        )
    except (RedisError, OperationalError):  # past the clients' retries: this turn only
        await consumer.send_error(
            Err.INTERNAL,
            "the task queue (Redis) is unreachable, try again",
            retryable=True,
            ref=ref,
        )


async def cancel_running_turns(consumer: Any) -> bool:
    return await database_sync_to_async(sessions.stop_turn)(consumer.session_id)
