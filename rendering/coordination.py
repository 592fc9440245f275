"""Render state shared through Redis: worker heartbeats, progress maxima, once-only guards.

Every key lives under `render:`; the broker's own keys (queues, `unacked`) are read here
only to measure backlogs and to hand a dead worker's tasks to the others.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.conf import settings

from chat.layers import shared_client

PREFIX = "render:"
WORKERS = PREFIX + "workers"  # zset nodename -> last heartbeat time
DONE_TTL_S = 24 * 3600


# Raise progress only: returns 1 when ARGV[1] is above the stored value (and stores it).
_RAISE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


client = shared_client  # one retrying, fork-safe pool per process (chat.layers)


def worker_key(nodename: str) -> str:
    return f"{PREFIX}worker:{nodename}"


def last_key(nodename: str) -> str:
    """The last heartbeat, kept after the live one expired: which tasks a dead worker had."""
    return f"{PREFIX}last:{nodename}"


def claims_key(nodename: str) -> str:
    return f"{PREFIX}claims:{nodename}"


def warm_key(nodename: str) -> str:
    return f"{PREFIX}warm:{nodename}"


def device_key(nodename: str) -> str:
    return f"{PREFIX}device:{nodename}"


def cancel_key(task_id: str) -> str:
    return f"{PREFIX}cancel:{task_id}"


# A heartbeat may be late on a loaded machine (seen: over 1.5 s with a dozen busy processes on
# two cores); a live worker called dead has its running render handed to another and run twice.
MIN_STALE_S = 5.0


def stale_after_s(beat: dict[str, Any] | None = None) -> float:
    """A heartbeat older than three intervals (and than MIN_STALE_S) means the worker is gone.

    Of a `beat`, by the interval its worker announced: every process then agrees on when a
    worker died, whatever its own RENDER_HEARTBEAT_S (with two answers, a rescuer with the
    longer one took the survivor's new delivery of a rescued render for the dead worker's)."""
    if beat is not None and beat.get("stale_after_s"):
        return float(beat["stale_after_s"])
    return max(3 * settings.RENDER_HEARTBEAT_S, MIN_STALE_S)


def read_workers(include_stale: bool = False) -> list[dict[str, Any]]:
    """Heartbeats of the render workers, newest state first; stale ones only when asked."""
    r = client()
    names = [n.decode() for n in r.zrange(WORKERS, 0, -1)]
    if not names:
        return []
    now = time.time()
    beats = r.mget([worker_key(n) for n in names])
    lasts = r.mget([last_key(n) for n in names]) if include_stale else [None] * len(names)
    seen = dict(zip(names, r.zmscore(WORKERS, names), strict=True))
    workers: list[dict[str, Any]] = []
    for name, raw, last in zip(names, beats, lasts, strict=True):
        if raw or last:
            beat = json.loads(raw or last)
        else:
            beat = {"nodename": name, "ts": seen.get(name) or 0.0}
        beat["age_s"] = round(now - float(beat.get("ts", 0.0)), 2)
        beat["alive"] = raw is not None and beat["age_s"] <= stale_after_s(beat)
        if beat["alive"] or include_stale:
            workers.append(beat)
    return workers


def raise_progress(task_id: str, value: int) -> bool:
    """Record `value` as the task's progress if it is higher than any before (any run)."""
    key = f"{PREFIX}progress:{task_id}"
    return bool(client().eval(_RAISE, 1, key, value, DONE_TTL_S))


def once(name: str, value: str = "1") -> bool:
    """True the first time for `name` (SET NX), False ever after (for a day)."""
    return bool(client().set(f"{PREFIX}once:{name}", value, nx=True, ex=DONE_TTL_S))


def done_before(name: str) -> bool:
    return bool(client().exists(f"{PREFIX}once:{name}"))


def is_cancelled(task_id: str) -> bool:
    return bool(task_id) and bool(client().exists(cancel_key(task_id)))


def mark_cancelled(task_id: str) -> None:
    client().set(cancel_key(task_id), "1", ex=DONE_TTL_S)


def note_warm(nodename: str, avatar_id: int, keep: int = 8) -> None:
    """The worker has this avatar prepared now; only the `keep` most recent count."""
    r = client()
    key = warm_key(nodename)
    pipe = r.pipeline()
    pipe.zadd(key, {str(avatar_id): time.time()})
    pipe.zremrangebyrank(key, 0, -keep - 1)
    pipe.expire(key, DONE_TTL_S)
    pipe.execute()


def note_device(nodename: str, device: str, backend: str) -> None:
    client().set(device_key(nodename), json.dumps({"device": device, "backend": backend}))
