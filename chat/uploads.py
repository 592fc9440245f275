"""The upload turn: one recorded utterance (a binary frame or an HTTP upload) is decoded,
stored under the session's prefix and answered by a Celery chain on the `speech` queue:
transcribe → reply → synthesize (→ render in video mode)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from celery import chain
from channels.db import database_sync_to_async
from django.conf import settings
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from chat import sessions
from chat.audio import TARGET_RATE, AudioInvalid, decode_upload, pcm_to_wav
from chat.models import Message
from chat.protocol import Err
from chat.storage import public_url, save_for_session


class UploadRefused(Exception):
    def __init__(self, code: Err, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_and_decode(data: bytes) -> bytes:
    """Size and format checks; the 16 kHz PCM of the utterance, or UploadRefused."""
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise UploadRefused(
            Err.TOO_LARGE, f"uploads are limited to {settings.MAX_UPLOAD_BYTES} bytes"
        )
    try:
        return decode_upload(data, settings.MAX_AUDIO_SECONDS)
    except AudioInvalid as exc:
        raise UploadRefused(Err.AUDIO_INVALID, str(exc)) from None


def accept_upload(session_id: uuid.UUID | str, pcm: bytes, ref: str | None) -> Message:
    """Store the normalised utterance, record the user message, start the chain."""
    from chat.tasks import turn_reply, turn_synthesize, turn_transcribe

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
        turn_transcribe.s(message.id, **options).set(task_id=uuid.uuid4().hex),
        turn_reply.s(**options).set(task_id=uuid.uuid4().hex),
        turn_synthesize.s(**options).set(task_id=uuid.uuid4().hex),
    ]
    ids = [step.id for step in steps]
    message.task_id = ids[0]
    message.save(update_fields=["audio", "audio_url", "duration_ms", "task_id"])
    sessions.stop_turn(session_id)  # a new utterance supersedes the turn in flight
    sessions.set_turn(session_id, ids)
    chain(*steps).apply_async()
    return message


async def start_upload_turn(consumer: Any, data: bytes, ref: str | None) -> None:
    try:
        pcm = await asyncio.to_thread(check_and_decode, data)
        await consumer.interrupt()
        await database_sync_to_async(accept_upload)(consumer.session_id, pcm, ref)
    except UploadRefused as exc:
        await consumer.send_error(exc.code, exc.message, ref=ref)
    except (RedisError, OperationalError):  # past the clients' retries: this turn only
        await consumer.send_error(
            Err.INTERNAL,
            "the task queue (Redis) is unreachable, try again",
            retryable=True,
            ref=ref,
        )


async def cancel_running_turns(consumer: Any) -> bool:
    return await database_sync_to_async(sessions.stop_turn)(consumer.session_id)
