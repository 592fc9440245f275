"""Render workers announce themselves in Redis, and hand the tasks of dead ones to the others.

A thread in each render worker's main process writes a heartbeat every RENDER_HEARTBEAT_S:
the worker's state from Celery's own bookkeeping (reserved and active requests), the
avatars its processes have warm and its device. The key expires after three intervals, so a
killed worker disappears by itself. Each beat also looks for dead workers: tasks restored
(or still waiting) on a dead worker's own queue would never run, so they move to the
shared `render` queue, where any worker takes them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings

from celery_app import PREPARE_TASK, RENDER_QUEUE, app, worker_queue
from rendering import coordination

log = logging.getLogger(__name__)

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport defaults
FORGET_AFTER_S = 60.0  # beyond the visibility timeout, when kombu has restored the rest


class Heartbeat:
    def __init__(self, nodename: str, concurrency: int) -> None:
        self.nodename, self.concurrency = nodename, concurrency
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="render-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Clean shutdown: leave the registry entry so the others empty our queue."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            coordination.client().delete(coordination.worker_key(self.nodename))
            move_queue(coordination.client(), worker_queue(self.nodename))
        except redis.RedisError:
            log.warning("could not deregister render worker %s", self.nodename)

    def _run(self) -> None:
        while not self._stop.wait(settings.RENDER_HEARTBEAT_S):
            try:
                self.beat()
                rescue_dead_workers()
            except redis.RedisError as exc:
                log.warning("render heartbeat failed: %s", exc)

    def snapshot(self) -> dict[str, Any]:
        from celery.worker import state

        active_requests = list(state.active_requests)
        active = [r.id for r in active_requests]
        reserved_requests = [r for r in list(state.reserved_requests) if r.id not in active]
        reserved = [r.id for r in reserved_requests]
        # the scheduler's load counts videos: an avatar being prepared is not one
        renders = sum(1 for r in active_requests + reserved_requests if r.name != PREPARE_TASK)
        r = coordination.client()
        warm = [int(a) for a in r.zrevrange(coordination.warm_key(self.nodename), 0, -1)]
        info = json.loads(r.get(coordination.device_key(self.nodename)) or "{}")
        return {
            "nodename": self.nodename,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": "busy" if active else "idle",
            "current_task": active[0] if active else None,
            "tasks": active + reserved,
            "backlog": renders,
            "concurrency": self.concurrency,
            "warm_avatars": warm,
            "device": info.get("device") or settings.RENDER_DEVICE,
            "backend": info.get("backend") or settings.RENDER_BACKEND,
            "stale_after_s": coordination.stale_after_s(),
            "ts": time.time(),
        }

    def beat(self) -> None:
        beat = self.snapshot()
        ttl_ms = int(coordination.stale_after_s() * 1000)
        keep_s = int(settings.CELERY_VISIBILITY_TIMEOUT_S + FORGET_AFTER_S)
        pipe = coordination.client().pipeline()
        pipe.set(coordination.worker_key(self.nodename), json.dumps(beat), px=ttl_ms)
        pipe.set(coordination.last_key(self.nodename), json.dumps(beat), ex=keep_s)
        pipe.zadd(coordination.WORKERS, {self.nodename: beat["ts"]})
        pipe.zremrangebyscore(coordination.claims_key(self.nodename), 0, beat["ts"] - ttl_ms / 1000)
        pipe.execute()


def _to_shared_queue(payload: dict[str, Any]) -> str:
    payload.setdefault("headers", {})["redelivered"] = True
    props = payload.setdefault("properties", {})
    props["delivery_info"] = {"exchange": RENDER_QUEUE, "routing_key": RENDER_QUEUE}
    return json.dumps(payload)


def move_queue(r: redis.Redis, queue: str) -> int:
    """Move every waiting message of `queue` to the shared queue, oldest first."""
    moved = 0
    while True:
        with r.pipeline() as pipe:
            try:
                pipe.watch(queue)
                raw = pipe.lindex(queue, -1)
                if raw is None:
                    return moved
                pipe.multi()
                pipe.rpop(queue)
                pipe.lpush(RENDER_QUEUE, _to_shared_queue(json.loads(raw)))
                pipe.execute()
                moved += 1
            except redis.WatchError:
                continue


def restore_unacked(r: redis.Redis, queue: str, task_ids: set[str], died_after: float) -> int:
    """Requeue on the shared queue the unacknowledged deliveries of a dead worker: those
    from its own queue (only it consumes that), and those of the tasks its last heartbeat
    named that were delivered before it was seen dead (a later delivery of the same task,
    after a rescue, belongs to a live worker)."""
    restored = 0
    for tag, raw in r.hgetall(UNACKED).items():
        try:
            payload, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if routing_key != queue:
            if payload.get("headers", {}).get("id") not in task_ids:
                continue
            delivered = r.zscore(UNACKED_INDEX, tag)
            if delivered is not None and delivered > died_after:
                continue
        with r.pipeline() as pipe:
            try:
                pipe.watch(UNACKED)
                if not pipe.hexists(UNACKED, tag):
                    continue
                pipe.multi()
                pipe.hdel(UNACKED, tag)
                pipe.zrem(UNACKED_INDEX, tag)
                pipe.rpush(RENDER_QUEUE, _to_shared_queue(payload))  # served next
                pipe.execute()
                restored += 1
            except redis.WatchError:
                continue
    return restored


def rescue_dead_workers() -> None:
    r = coordination.client()
    forget = settings.CELERY_VISIBILITY_TIMEOUT_S + FORGET_AFTER_S
    for beat in coordination.read_workers(include_stale=True):
        if beat["alive"]:
            continue
        node = beat["nodename"]
        queue = worker_queue(node)
        tasks = set(beat.get("tasks") or [])
        seen_dead_at = float(beat.get("ts", 0.0)) + coordination.stale_after_s(beat)
        restored = restore_unacked(r, queue, tasks, seen_dead_at)
        moved = move_queue(r, queue)
        if restored or moved:
            log.warning("render worker %s is gone: %d tasks requeued", node, restored + moved)
        if beat["age_s"] > forget:
            r.zrem(coordination.WORKERS, node)
            r.delete(
                coordination.claims_key(node),
                coordination.warm_key(node),
                coordination.device_key(node),
                coordination.last_key(node),
            )


_heartbeat: Heartbeat | None = None


def is_render_worker() -> bool:
    return RENDER_QUEUE in app.amqp.queues.consume_from


@worker_ready.connect
def start_heartbeat(sender: Any = None, **kwargs: Any) -> None:
    global _heartbeat
    if not is_render_worker() or _heartbeat is not None:
        return
    hostname = sender.hostname
    concurrency = getattr(getattr(sender, "controller", None), "concurrency", None) or 1
    _heartbeat = Heartbeat(hostname, int(concurrency))
    _heartbeat.start()
    rescue_dead_workers()


@worker_shutdown.connect
def stop_heartbeat(**kwargs: Any) -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
