"""`GET /healthz`: is every part this service needs up?

Checks the database, Redis, the channel layer and the live Celery workers per queue, all at
once, each with a short timeout and one quick retry, so a healthy service answers in a few
milliseconds and a blip that a retry a moment later would pass is not reported as an outage.
Answers 503 when a part stays down or a queue has no worker.

Workers are known from what they publish: every Celery worker process writes a presence key
to Redis every PRESENCE_INTERVAL_S (below, started by Celery's `worker_ready`), so the check
is two Redis reads instead of a broadcast `inspect` that always waits out its whole timeout.
Only when a required queue seems to have no worker (its worker may be alive but its presence
lost, e.g. Redis restarted without persistence) does the check ask the workers directly.

Anonymous callers learn only what is up and how long each check took; versions, vendors,
host and worker names and error texts go to staff users and to callers that present
HEALTHZ_TOKEN (`Authorization: Bearer …` or `?token=`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio as aioredis
from celery.signals import worker_ready, worker_shutdown
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

log = logging.getLogger(__name__)

REQUIRED_QUEUES = ("speech", "render")
# One try of one check. The checks' answers come back through the web process's event loop:
# when that loop is behind (a saturated process, a starved machine) they wait their turn
# there, which is load, not an outage. A dependency that is down refuses the connection at
# once; only a hung one makes a check wait this long.
ATTEMPT_TIMEOUT_S = 1.0
LAYER_TIMEOUT_S = 2.0  # the round trip waits on the loop twice (send, then receive)
RETRY_AFTER_S = 0.1  # the pause before the one retry of a failed check
# The broadcast asked only when a queue seems to have no worker: replies are awaited for
# ASK_WORKERS_TIMEOUT_S, but kombu's Redis transport polls in 1 s steps, so it takes ~1.1 s.
ASK_WORKERS_TIMEOUT_S = 0.5
ASK_WORKERS_BUDGET_S = 2.0
PRESENCE_INTERVAL_S = 2.0
PRESENCE_TTL_S = 3 * PRESENCE_INTERVAL_S  # a killed worker is gone from the check after this
PRESENCE_INDEX = "health:workers"  # zset nodename -> time of its last presence

# Blocking checks (the database, the rare broadcast) run on threads of their own: the loop's
# default executor is shared with everything else run in threads, and a health check must not
# queue behind that work.
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")


def presence_key(nodename: str) -> str:
    return f"health:worker:{nodename}"


class _Degraded(Exception):
    """A check that got an answer, and the answer is bad (a queue without a worker)."""

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.detail = detail


# --- the checks: each returns (public facts, staff-only detail) ------------------------------


def _query_database() -> dict[str, Any]:
    close_old_connections()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"vendor": connection.vendor}
    finally:
        connection.close()  # threads of this pool keep no connection between checks


async def _check_database() -> tuple[dict[str, Any], dict[str, Any]]:
    loop = asyncio.get_running_loop()
    return {}, await loop.run_in_executor(_executor, _query_database)


def _redis() -> aioredis.Redis:
    """A client without redis-py's own retries (3, with a backoff of seconds): the retry
    policy of a check is `_run`'s."""
    return aioredis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=ATTEMPT_TIMEOUT_S,
        socket_connect_timeout=ATTEMPT_TIMEOUT_S,
        retry=AsyncRetry(NoBackoff(), 0),
    )


async def _check_redis() -> tuple[dict[str, Any], dict[str, Any]]:
    client = _redis()
    try:
        await client.ping()
        info = await client.info("server")
        return {}, {"version": info.get("redis_version")}
    finally:
        await client.aclose()


async def _check_channel_layer() -> tuple[dict[str, Any], dict[str, Any]]:
    """A message through the layer and back, on the web process's own loop (a sync view's
    `async_to_sync` queued it behind the thread that serves every database call).

    The channel has the layer's default prefix on purpose: channels_redis keeps the messages
    of all of a process's own channels under one key per prefix, read by whichever receiver
    holds the process's receive lock. With a prefix of its own ("healthz.") the message sat
    under a key that the session consumers holding that lock never read, and the check timed
    out whenever a session was open."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "healthz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "healthz.ping":
        raise RuntimeError("channel layer returned another message")
    return {}, {}


async def _published_workers() -> dict[str, list[str]]:
    """Live workers and their queues, from their presence keys."""
    client = _redis()
    try:
        since = time.time() - PRESENCE_TTL_S
        names = [n.decode() for n in await client.zrangebyscore(PRESENCE_INDEX, since, "+inf")]
        beats = await client.mget([presence_key(n) for n in names]) if names else []
    finally:
        await client.aclose()
    return {
        name: json.loads(raw)["queues"]
        for name, raw in zip(names, beats, strict=True)
        if raw is not None
    }


def _ask_workers() -> dict[str, list[str]]:
    """The broadcast: which workers answer within ASK_WORKERS_TIMEOUT_S, on which queues."""
    from celery_app import app

    with app.connection_for_write(settings.REDIS_URL) as conn:
        inspect = app.control.inspect(timeout=ASK_WORKERS_TIMEOUT_S, connection=conn)
        replies = inspect.active_queues() or {}
    return {name: [q["name"] for q in queues] for name, queues in replies.items()}


async def _check_workers() -> tuple[dict[str, Any], dict[str, Any]]:
    workers = await _published_workers()
    source = "presence"
    if not all(any(q in queues for queues in workers.values()) for q in REQUIRED_QUEUES):
        loop = asyncio.get_running_loop()
        try:
            asked = await asyncio.wait_for(
                loop.run_in_executor(_executor, _ask_workers), ASK_WORKERS_BUDGET_S
            )
        except TimeoutError:
            asked = {}  # nobody answered in time: no worker we could count on
        workers, source = {**workers, **asked}, "presence+inspect"
    counts: Counter[str] = Counter(q for queues in workers.values() for q in set(queues))
    public = {"queues": {q: counts[q] for q in REQUIRED_QUEUES}}
    detail = {"workers": sorted(workers), "source": source}
    missing = [q for q in REQUIRED_QUEUES if not counts[q]]
    if missing:
        raise _Degraded(f"no live worker on queue {', '.join(missing)}", {**public, **detail})
    return public, detail


Check = Callable[[], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]


def _kind(exc: BaseException) -> str:
    """What an anonymous caller may know of a failure: its kind, not its text."""
    if isinstance(exc, TimeoutError | redis.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError | redis.ConnectionError):
        return "unreachable"
    return "failed"


async def _run(check: Check, privileged: bool, timeout: float) -> dict[str, Any]:
    """One check: a try, and after a short pause one more if it failed or timed out."""
    started = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
        try:
            public, detail = await asyncio.wait_for(check(), timeout)
            result = {"ok": True, **public, **(detail if privileged else {})}
            break
        except _Degraded as exc:
            # an answer, not a failure to get one: no retry (the broadcast already waited)
            public = {k: v for k, v in exc.detail.items() if k == "queues"}
            result = {"ok": False, "error": str(exc), **(exc.detail if privileged else public)}
            break
        except Exception as exc:  # a health check reports every failure, whatever it is
            if attempts < 2:
                await asyncio.sleep(RETRY_AFTER_S)
                continue
            result = {"ok": False, "error": _kind(exc)}
            if privileged:
                result["detail"] = f"{type(exc).__name__}: {exc}"
            break
    result["attempts"] = attempts
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


async def _privileged(request: HttpRequest) -> bool:
    token = settings.HEALTHZ_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        offered = header[7:] if header.startswith("Bearer ") else request.GET.get("token", "")
        if offered and hmac.compare_digest(offered.encode(), token.encode()):
            return True
    user = await request.auser()
    return bool(user.is_active and user.is_staff)


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    privileged = await _privileged(request)
    results = await asyncio.gather(
        _run(_check_database, privileged, ATTEMPT_TIMEOUT_S),
        _run(_check_redis, privileged, ATTEMPT_TIMEOUT_S),
        _run(_check_channel_layer, privileged, LAYER_TIMEOUT_S),
        # may ask the workers themselves: room for that broadcast's own timeout
        _run(_check_workers, privileged, ATTEMPT_TIMEOUT_S + ASK_WORKERS_BUDGET_S),
    )
    names = ("database", "redis", "channel_layer", "workers")
    report = dict(zip(names, results, strict=True))
    ok = all(result["ok"] for result in results)
    response = JsonResponse(
        {"status": "ok" if ok else "down", "checks": report}, status=200 if ok else 503
    )
    response["Cache-Control"] = "no-store"
    return response


# --- the workers' side: presence ---------------------------------------------------------------


class Presence:
    """A thread in a Celery worker's main process that says, every PRESENCE_INTERVAL_S, which
    queues the worker consumes; the key expires by itself when the worker is killed."""

    def __init__(self, nodename: str, consumer: Any) -> None:
        self.nodename, self.consumer = nodename, consumer
        self.client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-presence", daemon=True)

    def queues(self) -> list[str]:
        return sorted(self.consumer.app.amqp.queues.consume_from)

    def beat(self) -> None:
        now = time.time()
        body = json.dumps({"queues": self.queues(), "ts": now})
        with self.client.pipeline() as pipe:
            pipe.set(presence_key(self.nodename), body, px=int(PRESENCE_TTL_S * 1000))
            pipe.zadd(PRESENCE_INDEX, {self.nodename: now})
            # names not heard of for a day are forgotten
            pipe.zremrangebyscore(PRESENCE_INDEX, "-inf", now - 86400)
            pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(PRESENCE_INTERVAL_S):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("worker presence not published: %s", exc)

    def start(self) -> None:
        try:
            self.beat()
        except redis.RedisError as exc:
            log.warning("worker presence not published: %s", exc)
        self._thread.start()

    def stop(self) -> None:
        """A clean stop leaves at once instead of after the key's expiry."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with self.client.pipeline() as pipe:
                pipe.delete(presence_key(self.nodename))
                pipe.zrem(PRESENCE_INDEX, self.nodename)
                pipe.execute()
        except redis.RedisError:
            log.warning("could not withdraw the presence of worker %s", self.nodename)


_presence: Presence | None = None


@worker_ready.connect
def publish_presence(sender: Any = None, **kwargs: Any) -> None:
    global _presence
    if _presence is None and sender is not None:
        _presence = Presence(sender.hostname, sender)
        _presence.start()


@worker_shutdown.connect
def withdraw_presence(**kwargs: Any) -> None:
    global _presence
    if _presence is not None:
        _presence.stop()
        _presence = None
