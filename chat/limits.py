"""Limits that protect the provider bill, counted in Redis so that they hold across web processes.

Each limit counts per *subject*: the logged-in user of the session's ticket (`user:<id>`), else
the client's address (`ip:<address>`). Concurrent sessions are a sorted set of the subject's open
sessions (renewed while they live, so a crashed process's sessions fall out by themselves); the
others are fixed windows, a minute or a UTC day, whose key expires after the window. A limit of
0 is no limit. Reaching one is `ERR_RATE_LIMITED` with `limit` (which) and `retry_after` (seconds
until the window that refused opens again); operators see the counters (`manage.py limits`) and
the refusals (the metric `echo_limit_refusals` by limit, and one log line each).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

from chat.layers import shared_client
from echoproject import metrics

log = logging.getLogger(__name__)
PREFIX = "echo:limit:"
MINUTE, DAY = 60, 86400


@dataclass(frozen=True)
class Limit:
    name: str  # as sent to clients in `limit`
    setting: str
    window_s: int  # 0: not a window (concurrent sessions)
    unit: str


SESSIONS = Limit("sessions", "LIMIT_SESSIONS", 0, "open sessions")
TURNS = Limit("turns_per_minute", "LIMIT_TURNS_PER_MINUTE", MINUTE, "turns in a minute")
AUDIO = Limit("audio_s_per_day", "LIMIT_AUDIO_S_PER_DAY", DAY, "seconds of audio today")
REPLY = Limit("reply_chars_per_day", "LIMIT_REPLY_CHARS_PER_DAY", DAY, "reply characters today")
VIDEO = Limit("video_s_per_day", "LIMIT_VIDEO_S_PER_DAY", DAY, "seconds of video today")
LIMITS = {limit.name: limit for limit in (SESSIONS, TURNS, AUDIO, REPLY, VIDEO)}


class Limited(Exception):
    """A limit is reached; `retry_after` seconds from now it may pass again."""

    def __init__(self, limit: Limit, allowed: float, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = max(1, retry_after)
        self.message = f"limit reached: {allowed:g} {limit.unit}; try again in {self.retry_after} s"
        super().__init__(self.message)

    def fields(self) -> dict[str, Any]:
        """The extra fields of the `error` event and of the HTTP error body."""
        return {"limit": self.limit.name, "retry_after": self.retry_after}


def _refused(limit: Limit, who: str, allowed: float, retry_after: int) -> Limited:
    """The refusal to raise, counted for operators (echo_limit_refusals) and logged once."""
    metrics.limit_refused(limit.name)
    log.info("limits: %s refused for %s (%g %s)", limit.name, who, allowed, limit.unit)
    return Limited(limit, allowed, retry_after)


def allowed(limit: Limit) -> float:
    return getattr(settings, limit.setting)


def subject(user_id: int | None, address: str | None) -> str:
    return f"user:{user_id}" if user_id else f"ip:{address or 'unknown'}"


def subject_of(session_id: uuid.UUID | str) -> str | None:
    """The subject a session's usage counts against (None when the session is gone)."""
    from chat.models import ChatSession

    row = ChatSession.objects.filter(pk=session_id).values("user_id", "client_info").first()
    if row is None:
        return None
    return subject(row["user_id"], (row["client_info"] or {}).get("ip"))


def _window(limit: Limit, now: float) -> tuple[str, int]:
    """The key part and the seconds left of the current window of `limit`."""
    index = int(now // limit.window_s)
    return str(index), math.ceil((index + 1) * limit.window_s - now)


def _key(limit: Limit, who: str, window: str = "-") -> str:
    """`echo:limit:<limit>:<window>:<subject>`: the subject last, as it may hold colons (IPv6)."""
    return f"{PREFIX}{limit.name}:{window}:{who}"


# --- concurrent sessions ------------------------------------------------------------------------

_OPEN = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _stale_after_s() -> float:
    """A session not renewed for this long is gone (its process died without ending it)."""
    from chat.sessions import touch_interval_s

    return settings.SESSION_TIMEOUT_S + 2 * touch_interval_s()


def open_session(who: str, session_id: str) -> None:
    """Count a new session of `who`, or raise Limited when they have LIMIT_SESSIONS open
    (without the limit nothing is counted: no Redis round trip at the handshake)."""
    if not allowed(SESSIONS):
        return
    now = time.time()
    stale = _stale_after_s()
    ok = shared_client().eval(
        _OPEN,
        1,
        _key(SESSIONS, who),
        now - stale,
        int(allowed(SESSIONS)),
        now,
        session_id,
        math.ceil(stale),
    )
    if not ok:
        raise _refused(SESSIONS, who, allowed(SESSIONS), min(60, math.ceil(stale)))


def renew_session(who: str, session_id: str) -> None:
    if not allowed(SESSIONS):
        return
    key = _key(SESSIONS, who)
    client = shared_client()
    client.zadd(key, {session_id: time.time()}, xx=True)
    client.expire(key, math.ceil(_stale_after_s()))


def close_session(who: str, session_id: str) -> None:
    if not allowed(SESSIONS):
        return
    shared_client().zrem(_key(SESSIONS, who), session_id)


# --- windows ------------------------------------------------------------------------------------


def take_turn(who: str) -> None:
    """Count one turn, or raise Limited (not counting it) past LIMIT_TURNS_PER_MINUTE."""
    cap = allowed(TURNS)
    if not cap:
        return
    window, left = _window(TURNS, time.time())
    key = _key(TURNS, who, window)
    client = shared_client()
    with client.pipeline() as pipe:
        count, _ = pipe.incr(key).expire(key, 2 * TURNS.window_s).execute()
    if count > cap:
        client.decr(key)
        raise _refused(TURNS, who, cap, left)


def check(limit: Limit, who: str) -> None:
    """Raise Limited when `who` has used up `limit` in its current window."""
    cap = allowed(limit)
    if not cap:
        return
    window, left = _window(limit, time.time())
    used = shared_client().get(_key(limit, who, window))
    if used is not None and float(used) >= cap:
        raise _refused(limit, who, cap, left)


def add(limit: Limit, who: str, amount: float) -> None:
    """Count `amount` of `limit` used by `who` (counted with or without a limit, for operators)."""
    if amount <= 0:
        return
    window, _ = _window(limit, time.time())
    key = _key(limit, who, window)
    with shared_client().pipeline() as pipe:
        pipe.incrbyfloat(key, amount).expire(key, 2 * limit.window_s).execute()


def add_for_session(limit: Limit, session_id: uuid.UUID | str, amount: float) -> None:
    """Count usage of a session from wherever it happened (web process, worker); a Redis
    failure loses this count, never the work that was done."""
    who = subject_of(session_id)
    if who is None:
        return
    try:
        add(limit, who, amount)
    except (redis.RedisError, OSError) as exc:
        log.warning("limits: could not count %s %s of %s: %s", amount, limit.name, who, exc)


def turn_limited() -> bool:
    """Whether any limit applies to turns (else admitting one needs no Redis round trip)."""
    return any(allowed(limit) for limit in (TURNS, AUDIO, REPLY, VIDEO))


def admit_turn(who: str, *, audio: bool, video: bool) -> None:
    """A new user turn of `who`: within every limit it may spend, and counted as a turn."""
    check(REPLY, who)
    if audio:
        check(AUDIO, who)
    if video:
        check(VIDEO, who)
    take_turn(who)


# --- for operators ------------------------------------------------------------------------------


def _parse(key: str) -> tuple[Limit | None, str, str]:
    name, window, who = key[len(PREFIX) :].split(":", 2)
    return LIMITS.get(name), window, who


def usage(who: str | None = None) -> list[dict[str, Any]]:
    """Every current counter (of one subject, or of all), with its limit and when it resets."""
    client = shared_client()
    now = time.time()
    rows: list[dict[str, Any]] = []
    pattern = f"{PREFIX}*:{who}" if who else f"{PREFIX}*"
    for raw in client.scan_iter(match=pattern, count=500):
        limit, window, subject_part = _parse(raw.decode())
        if limit is None or (who and subject_part != who):
            continue
        if limit.window_s:
            current, left = _window(limit, now)
            if window != current:
                continue  # a past window, expiring
            value = client.get(raw)
            used = float(value) if value is not None else 0.0
        else:
            left = 0
            client.zremrangebyscore(raw, "-inf", now - _stale_after_s())
            used = float(client.zcard(raw))
        rows.append(
            {
                "subject": subject_part,
                "limit": limit.name,
                "used": round(used, 1),
                "allowed": allowed(limit),
                "resets_in_s": left,
            }
        )
    return sorted(rows, key=lambda r: (r["subject"], r["limit"]))


def reset(who: str) -> int:
    """Forget every counter of `who` (a person the operator lets go on); returns keys deleted."""
    client = shared_client()
    keys = [
        raw
        for raw in client.scan_iter(match=f"{PREFIX}*:{who}", count=500)
        if _parse(raw.decode())[2] == who
    ]
    return client.delete(*keys) if keys else 0
