"""The channel layer: channels_redis's, made to ride out Redis disconnects, pauses and restarts.

channels_redis 4.3 lets every Redis connection error escape: a `receive` that fails while it
holds the process's receive lock raises `ConnectionError` into one consumer, which Channels
answers by closing its WebSocket with 1011. Here every operation retries with a backoff
instead (the consumer's receive loop for as long as it runs, `send`/`group_send`/`group_add`
for a bounded window, `group_discard` best-effort), so a killed connection or a paused server
is a short delay, not a lost session.

A restarted Redis without persistence has lost every group membership, so events published
to a session's group would reach nobody. The layer remembers the groups each channel of this
process joined and watches the server's `run_id` (on reconnects and every few seconds from
the receive loop); when it changes, it adds the memberships again. Messages that were in Redis
when it restarted are lost; events published in the moment before the re-add are lost too.

Also home to `sync_retry()`, the retry policy of the synchronous Redis clients of the service.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

log = logging.getLogger(__name__)
T = TypeVar("T")

# what a dropped, refused or paused connection raises (BusyLoadingError, a server still
# loading its data after a restart, is a RedisConnectionError)
RETRYABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 1.0


def sync_retry(attempts: int = 10) -> Retry:
    """The retry policy of synchronous Redis clients (session turns, presence): ten attempts,
    0.1 s doubling to 1 s apart, about 7.5 s in all: a restart or a short pause of Redis is
    ridden out, a longer outage fails the one operation."""
    # OSError too: redis-py connects outside the command's retry, and a refused connect
    # surfaces there as a plain ConnectionRefusedError
    return Retry(
        ExponentialBackoff(cap=MAX_DELAY_S, base=FIRST_DELAY_S),
        attempts,
        supported_errors=RETRYABLE,
    )


_shared: tuple[int, redis.Redis] | None = None


def shared_client() -> redis.Redis:
    """The process's synchronous Redis client (session turns, deliveries, render state): one
    connection pool per process, made anew after a fork (pools must not cross one), retrying
    through a restart or pause of Redis (`sync_retry`)."""
    global _shared
    if _shared is None or _shared[0] != os.getpid():
        _shared = (os.getpid(), redis.Redis.from_url(settings.REDIS_URL, retry=sync_retry()))
    return _shared[1]


class ResilientRedisChannelLayer(RedisChannelLayer):
    """`RedisChannelLayer` that retries connection errors and re-adds group memberships
    after a Redis restart. Configured in CHANNEL_LAYERS; takes the same options plus
    `retry_window_s` (how long sends and group changes keep retrying before they raise) and
    `check_interval_s` (how often the receive loop compares the server's run id)."""

    def __init__(
        self, *args: Any, retry_window_s: float = 10.0, check_interval_s: float = 2.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.retry_window_s = retry_window_s
        self.check_interval_s = check_interval_s
        self.memberships: dict[str, set[str]] = defaultdict(set)  # channel -> groups
        self._run_ids: dict[int, str] = {}
        self._next_check: dict[int, float] = {}

    async def _retrying(
        self, what: str, operation: Callable[[], Awaitable[T]], window: float | None
    ) -> T:
        """Run `operation` until it gets through; None as window: until cancelled."""
        deadline = None if window is None else time.monotonic() + window
        delay, failures = FIRST_DELAY_S, 0
        while True:
            try:
                result = await operation()
            except RETRYABLE as exc:
                failures += 1
                if deadline is not None and time.monotonic() + delay > deadline:
                    log.error(
                        "channel layer: %s failed for %.0f s, giving up: %s", what, window, exc
                    )
                    raise
                if failures == 1:
                    log.warning("channel layer: %s failed (%s), retrying", what, exc)
                self._next_check.clear()  # a new connection: was the server restarted?
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_DELAY_S)
                continue
            if failures:
                log.warning("channel layer: %s went through after %d retries", what, failures)
            return result

    # --- sending ------------------------------------------------------------------------------
    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._retrying(
            "send", functools.partial(super().send, channel, message), self.retry_window_s
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._retrying(
            f"group_send to {group}",
            functools.partial(super().group_send, group, message),
            self.retry_window_s,
        )

    # --- groups -------------------------------------------------------------------------------
    async def group_add(self, group: str, channel: str) -> None:
        self.memberships[channel].add(group)  # first, so that a restart meanwhile re-adds it
        await self._retrying(
            f"group_add to {group}",
            functools.partial(super().group_add, group, channel),
            self.retry_window_s,
        )

    async def group_discard(self, group: str, channel: str) -> None:
        """Best-effort: the consumer is going away either way, and a membership left behind
        only costs messages that expire unread (after `expiry`), and itself after
        `group_expiry`."""
        groups = self.memberships.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self.memberships[channel]
        try:
            await self._retrying(
                f"group_discard from {group}",
                functools.partial(super().group_discard, group, channel),
                self.retry_window_s,
            )
        except RETRYABLE:
            pass

    # --- receiving ----------------------------------------------------------------------------
    async def receive_single(self, channel: str) -> tuple[Any, dict[str, Any]]:
        """The receive loop of this process's consumers: retried for as long as it runs (it is
        cancelled when its consumer ends), so no consumer ever sees a connection error."""
        return await self._retrying(
            f"receive on {channel}", functools.partial(super().receive_single, channel), None
        )

    async def _brpop_with_clean(self, index: int, channel: str, timeout: int) -> Any:
        await self._check_restart(index)
        return await super()._brpop_with_clean(index, channel, timeout)

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        """A processed message left in the backup queue is only delivered again (channels_redis
        accepts duplicates there); not worth failing a detached task over."""
        try:
            await super()._clean_receive_backup(index, channel)
        except RETRYABLE as exc:
            log.info("channel layer: could not clean the backup of %s: %s", channel, exc)

    # --- restarts -----------------------------------------------------------------------------
    async def _check_restart(self, index: int) -> None:
        """Compare the server's run id with the one seen before; re-add memberships if it
        changed. At most every `check_interval_s`, and on the first call after an error."""
        now = time.monotonic()
        if now < self._next_check.get(index, 0.0):
            return
        self._next_check[index] = now + self.check_interval_s
        info = await self.connection(index).info("server")
        run_id = str(info.get("run_id", ""))
        previous = self._run_ids.get(index)
        if previous is not None and previous != run_id:
            count = await self.readd_groups(index)
            log.warning(
                "channel layer: Redis %s restarted (new run id), %d group memberships re-added",
                index,
                count,
            )
        self._run_ids[index] = run_id  # only after the re-add went through

    async def readd_groups(self, index: int) -> int:
        """Add every group membership of this process's channels on shard `index` again."""
        pairs = [
            (group, channel)
            for channel, groups in list(self.memberships.items())
            for group in list(groups)
            if self.consistent_hash(group) == index
        ]
        if not pairs:
            return 0
        now = time.time()
        pipe = self.connection(index).pipeline(transaction=False)
        for group, channel in pairs:
            key = self._group_key(group)
            pipe.zadd(key, {channel: now})
            pipe.expire(key, self.group_expiry)
        await pipe.execute()
        return len(pairs)
