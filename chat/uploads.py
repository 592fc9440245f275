"""The upload turn: one recorded utterance (a binary frame or an HTTP upload) is decoded,
stored under the session's prefix and answered by one Celery task on the `speech` queue
(chat.upload_turn): transcribe → reply → synthesize (→ render in video mode).

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

from django.conf import settings

from chat import inflight, limits, sessions, stopping
from chat.audio import TARGET_RATE, AudioInvalid, decode_upload, lower_priority, pcm_to_wav
from chat.models import ChatSession, Message
from chat.protocol import Err
from chat.storage import public_url, save_for_session
from chat.tasks import upload_turn

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
    """Store the normalised utterance, record the user message, start the turn's task (it
    supersedes the upload turn in flight); raises limits.Limited when the session's user or
    address has reached a limit (chat.limits)."""
    row = ChatSession.objects.filter(pk=session_id).values("user_id", "client_info", "mode").first()
    if row is None:
        raise UploadRefused(Err.STATE, "the session has ended")
    who = limits.subject(row["user_id"], (row["client_info"] or {}).get("ip"))
    limits.admit_turn(who, audio=True, video=row["mode"] == "video")
    limits.add(limits.AUDIO, who, len(pcm) / (2 * TARGET_RATE))
    message = sessions.add_message(session_id, sessions.USER, ref=ref)
    name = save_for_session(
        session_id, f"audio/user-{message.id}.wav", pcm_to_wav(pcm, TARGET_RATE)
    )
    if name is None:
        raise UploadRefused(Err.STATE, "the session has ended")
    message.audio, message.audio_url = name, public_url(name)
    message.duration_ms = len(pcm) * 1000 // (2 * TARGET_RATE)
    task_id = uuid.uuid4().hex
    message.turn_task_id = task_id
    message.save(update_fields=["audio", "audio_url", "duration_ms", "turn_task_id"])
    stopping.stop_turn(session_id)  # a new utterance supersedes the turn in flight
    inflight.set_turn(session_id, [task_id])
    upload_turn.apply_async(
        (message.id,),
        {"session_id": str(session_id), "sent_at": time.time()},  # ids only: Flower shows them
        task_id=task_id,
    )
    log.info(
        "upload turn %s sent to the speech workers",
        message.id,
        extra={"session_id": str(session_id), "turn_id": str(message.id)},
    )
    return message
