"""Each avatar's idle loop and the preparation of avatars on the render workers.

The idle loop is a short silent clip of the avatar at rest (breathing, swaying a little,
blinking) that loops seamlessly; the web client plays it between replies. A render worker
makes it from the portrait (LiteBackend.idle_clip) and stores it in media storage under a name
that holds a digest of what it is made from (portrait file, landmarks, mouth point, size,
frame rate): a new portrait or new landmarks name a new clip, and storing the new one deletes
the avatar's older ones. Web processes only look the clip up (`idle_url`, no torch here) and,
when it is missing, ask the render workers to prepare the avatar.

Preparing an avatar on a worker (rendering.tasks.prepare_avatar) also builds what the backend
keeps per portrait (the lite backend's mesh fields), so the avatar's first reply starts at
once: every live worker gets the task when an avatar is saved, and a worker prepares the known
avatars when it starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis
from django.conf import settings
from django.core.files.storage import default_storage
from kombu.exceptions import OperationalError

from celery_app import worker_queue
from chat.storage import public_url
from rendering import coordination

log = logging.getLogger(__name__)

IDLE_DIR = "avatars/idle"
IDLE_VERSION = 1  # raise when the clip's look changes: every avatar gets a new one
MAKES_IDLE = {"lite"}  # backends whose workers make idle clips (RenderBackend.idle_clip)
ASK_AGAIN_S = 60  # a missing clip is asked for at most once a minute per avatar state


def digest(avatar: Any) -> str:
    """What the clip is made from, as a short hash."""
    source = {
        "image": avatar.image.name if avatar.image else "",
        "face": avatar.face or {},
        "mouth": [round(avatar.mouth_x, 4), round(avatar.mouth_y, 4)],
        "size": settings.RENDER_MAX_SIZE,
        "fps": settings.RENDER_FPS,
        "version": IDLE_VERSION,
    }
    return hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]


def idle_name(avatar: Any) -> str:
    return f"{IDLE_DIR}/{avatar.pk}-{digest(avatar)}.mp4"


def idle_url(avatar: Any) -> str | None:
    """The URL of the avatar's idle loop, or None while there is none (then the render
    workers are asked to make it, and a later session gets it)."""
    if not avatar.image or settings.RENDER_BACKEND not in MAKES_IDLE:
        return None
    name = idle_name(avatar)
    try:
        if default_storage.exists(name):
            return public_url(name)
    except Exception:  # storage unreachable: the poster shows instead
        log.warning("idle clip %s: storage lookup failed", name, exc_info=True)
        return None
    if settings.RENDER_PREPARE_AVATARS:
        request_prepare(avatar)
    return None


def request_prepare(avatar: Any) -> int:
    """Send `prepare_avatar` to every live render worker's own queue, once per avatar state
    per ASK_AGAIN_S; returns to how many workers."""
    if not avatar.image:
        return 0
    from rendering.tasks import prepare_avatar  # the task module imports this one

    try:
        key = f"{coordination.PREFIX}prepare:{avatar.pk}:{digest(avatar)}"
        if not coordination.client().set(key, "1", nx=True, ex=ASK_AGAIN_S):
            return 0
        nodes = [beat["nodename"] for beat in coordination.read_workers()]
        for node in nodes:
            prepare_avatar.apply_async((avatar.pk,), queue=worker_queue(node), expires=600)
    except (redis.RedisError, OperationalError) as exc:
        log.warning("could not ask the render workers to prepare avatar %s: %s", avatar.pk, exc)
        return 0
    return len(nodes)


def delete_clips(avatar_id: int, keep: str = "") -> int:
    """Delete the avatar's idle clips but `keep`; returns how many."""
    try:
        _, files = default_storage.listdir(IDLE_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    gone = 0
    for filename in files:
        name = f"{IDLE_DIR}/{filename}"
        if filename.startswith(f"{avatar_id}-") and name != keep:
            default_storage.delete(name)
            gone += 1
    return gone
