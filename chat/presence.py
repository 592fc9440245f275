"""Web processes announce themselves in Redis, so that the sessions of a dead one end quickly.

A web process killed outright (SIGKILL, OOM, a lost machine) runs no disconnect handler: its
sessions would stay open, with their files, until the idle timeout. Instead each web process
keeps a key `echo:web:<process id>` alive (TTL `WEB_PRESENCE_TTL_S`, renewed three times per
TTL by a task on its event loop) and records its process id on every session it opens. The
periodic cleanup ends the open sessions of process ids whose key has expired
(`chat.sessions.cleanup`, reason `server_lost`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from typing import Any

import redis
from django.conf import settings
from redis import asyncio as aioredis

from chat.layers import shared_client

log = logging.getLogger(__name__)
KEY_PREFIX = "echo:web:"

_process_id: tuple[int, str] | None = None
_announcer: asyncio.Task[None] | None = None
_announcer_loop: asyncio.AbstractEventLoop | None = None


def process_id() -> str:
    """This process's id: host, pid and a random part, so a reused pid is another process."""
    global _process_id
    if _process_id is None or _process_id[0] != os.getpid():
        value = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        _process_id = (os.getpid(), value)
    return _process_id[1]


def key(process: str) -> str:
    return KEY_PREFIX + process


def refresh_interval_s() -> float:
    return settings.WEB_PRESENCE_TTL_S / 3


async def announce() -> str:
    """Make sure this process is announced and keeps being so; returns its id.

    The first call on an event loop writes the key before returning (a session recorded under
    this id is never seen without it) and starts the task that renews it."""
    global _announcer, _announcer_loop
    loop = asyncio.get_running_loop()
    if _announcer is None or _announcer.done() or _announcer_loop is not loop:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            await _write(client)
        except (redis.RedisError, OSError) as exc:  # the renewing task keeps trying
            log.warning("could not announce web process %s: %s", process_id(), exc)
        _announcer_loop = loop
        _announcer = loop.create_task(_keep_announcing(client), name="web-presence")
    return process_id()


async def _write(client: Any) -> None:
    value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "ts": time.time()})
    ttl_ms = int(settings.WEB_PRESENCE_TTL_S * 1000)
    await client.set(key(process_id()), value, px=ttl_ms)


async def _keep_announcing(client: Any) -> None:
    """Renew the key for as long as the process lives; Redis errors only shorten the wait."""
    delay, failing = refresh_interval_s(), False
    while True:
        await asyncio.sleep(delay)
        try:
            await _write(client)
        except (redis.RedisError, OSError) as exc:
            if not failing:
                log.warning("could not renew web process %s, retrying: %s", process_id(), exc)
            delay, failing = min(refresh_interval_s(), 1.0), True
            continue
        if failing:
            log.warning("web process %s announced again", process_id())
        delay, failing = refresh_interval_s(), False


def alive(processes: Iterable[str]) -> set[str] | None:
    """Which of `processes` are announced now; None when that cannot be told: a Redis that
    restarted less than one TTL ago has not yet heard again from every live process."""
    processes = list(processes)
    client = shared_client()
    uptime = int(client.info("server").get("uptime_in_seconds", 0))
    if uptime < settings.WEB_PRESENCE_TTL_S:
        return None
    if not processes:
        return set()
    present = client.mget([key(p) for p in processes])
    return {p for p, value in zip(processes, present, strict=True) if value is not None}
