"""Chooses where a render task runs and sends it there.

An idle, live worker (fresh heartbeat, nothing reserved, nothing waiting on its own queue,
no task sent to it since its last beat) gets the task on its own queue `render.<nodename>`,
preferring one that has the avatar warm; otherwise the task waits on the shared `render`
queue for the first worker to free up. Past RENDER_MAX_BACKLOG tasks in the system the turn
is refused with RenderBusy (the caller's ERR_BUSY) rather than left waiting for ever.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
import wave
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import default_storage

from celery_app import PREPARE_TASK, RENDER_QUEUE, worker_queue
from chat import protocol
from chat.events import publish_sync
from chat.models import Message
from chat.video import RenderBusy
from rendering import coordination
from rendering.tasks import render_video

log = logging.getLogger(__name__)

# per backend: soft time limit = base + factor × audio seconds (echomimic: several times slower
# than real time even on large GPUs, plus model warm-up)
TIME_LIMITS = {"lite": (30.0, 3.0), "echomimic": (120.0, 40.0)}


@dataclass(frozen=True)
class RenderTicket:
    task_id: str
    queue: str
    position: int  # tasks ahead of this one; 0 = starting now


@dataclass(frozen=True)
class WorkerLoad:
    nodename: str
    load: int  # reserved + active, plus waiting on its own queue, plus sent since its beat
    concurrency: int
    warm: bool

    @property
    def free(self) -> bool:
        return self.load < self.concurrency


def worker_loads(avatar_id: int | None) -> list[WorkerLoad]:
    """Live workers and how much each has to do, from heartbeats and the queues."""
    r = coordination.client()
    workers = coordination.read_workers()
    if not workers:
        return []
    pipe = r.pipeline()
    for beat in workers:
        pipe.lrange(worker_queue(beat["nodename"]), 0, -1)
        pipe.zcount(coordination.claims_key(beat["nodename"]), f"({beat['ts']}", "+inf")
    counts = pipe.execute()
    loads = []
    for i, beat in enumerate(workers):
        waiting, claimed = renders_in(counts[2 * i]), counts[2 * i + 1]
        loads.append(
            WorkerLoad(
                nodename=beat["nodename"],
                load=int(beat.get("backlog", 0)) + waiting + claimed,
                concurrency=max(1, int(beat.get("concurrency", 1))),
                warm=avatar_id is not None and avatar_id in beat.get("warm_avatars", []),
            )
        )
    return loads


def renders_in(messages: list[bytes]) -> int:
    """How many of a worker queue's messages are renders (the queue also carries the
    preparation of avatars, which is not a video waiting)."""
    count = 0
    for raw in messages:
        try:
            task = json.loads(raw).get("headers", {}).get("task")
        except (ValueError, AttributeError):
            task = None
        count += task != PREPARE_TASK  # an unreadable message counts, as before
    return count


def choose(loads: list[WorkerLoad], shared_waiting: int) -> tuple[str, int]:
    """(queue, position) for one more task, or RenderBusy."""
    backlog = shared_waiting + sum(w.load for w in loads)
    if backlog >= settings.RENDER_MAX_BACKLOG:
        raise RenderBusy(
            f"all render workers are busy ({backlog} videos waiting or rendering); "
            "try again in a moment"
        )
    free = [w for w in loads if w.free]
    if free and not shared_waiting:
        random.shuffle(free)  # spread ties between web processes
        best = min(free, key=lambda w: (not w.warm, w.load / w.concurrency))
        return worker_queue(best.nodename), 0
    return RENDER_QUEUE, shared_waiting + (1 if loads else 0)


def time_limits(audio_s: float) -> tuple[int, int]:
    """Soft and hard time limits of one render, scaled by the length of its audio."""
    base, per_second = TIME_LIMITS.get(settings.RENDER_BACKEND, (60.0, 40.0))
    soft = int(base + per_second * max(audio_s, 1.0))
    return soft, soft + 30


def audio_seconds(message: Message) -> float:
    """The reply's length: from the message, else from the WAV header in storage."""
    if message.duration_ms:
        return message.duration_ms / 1000
    try:
        with default_storage.open(message.audio, "rb") as handle, wave.open(handle) as wav:
            return wav.getnframes() / float(wav.getframerate())
    except Exception:  # not a WAV, or unreadable: the task reports it; limits stay generous
        return 60.0


def submit_render(message_id: int, ref: str | None = None) -> RenderTicket:
    """Send the render of an assistant message to the best worker and tell the client;
    `ref` (the turn's) comes back on the render's error: the task reads it off the turn's user
    message (chat.models.Message.ref), not from its arguments."""
    message = Message.objects.select_related("session").get(pk=message_id)
    r = coordination.client()
    loads = worker_loads(message.session.avatar_id)
    queue, position = choose(loads, r.llen(RENDER_QUEUE))
    soft, hard = time_limits(audio_seconds(message))
    task_id = str(uuid.uuid4())
    if queue != RENDER_QUEUE:
        node = queue[len(RENDER_QUEUE) + 1 :]
        pipe = r.pipeline()
        pipe.zadd(coordination.claims_key(node), {task_id: time.time()})
        pipe.expire(coordination.claims_key(node), 3600)
        pipe.execute()
    Message.objects.filter(pk=message_id).update(render_task_id=task_id)
    event = protocol.event(
        "video_queued", None, task_id=task_id, message_id=message_id, position=position
    )
    publish_sync(message.session_id, event)  # before the task can report progress
    render_video.apply_async(
        (message_id,),
        {"sent_at": time.time()},  # ids only (Flower shows them): the task reads the ref
        task_id=task_id,
        queue=queue,
        soft_time_limit=soft,
        time_limit=hard,
    )
    log.info("render of message %s sent to %s (position %d)", message_id, queue, position)
    return RenderTicket(task_id=task_id, queue=queue, position=position)
