"""Carrying results from worker threads (SDK callbacks, blocking engines) into asyncio.

SDKs and engines here call back on their own threads; the event loop must never block on them.
A `ThreadBridge` is an `asyncio.Queue` that threads fill through `loop.call_soon_threadsafe`,
and `run_in_daemon` runs a blocking call on a daemon thread so that an abandoned call (a hung
connection) can never hold up the loop's shutdown the way the default executor would.

`spawn` runs such work on reusable daemon threads without the caller ever waiting for a thread
to start: `threading.Thread.start()` blocks until the new thread has run, which on a busy
machine (every core taken, the GIL contended) holds the event loop, and with it every session's
audio frames, for milliseconds each time a turn opens a stream.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from chat.providers.base import ProviderError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ITEM, _ERROR, _END = "item", "error", "end"


class ThreadBridge(Generic[T]):
    """A one-way channel from any thread to one asyncio consumer: items, then an end or an
    error. Calls from threads after the loop closed are dropped (the consumer is gone)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._closed = False  # the consumer has seen the end
        self._ended = False  # an end or an error is queued
        # posted from threads, not yet handed to the loop; one wake-up carries them all
        self._incoming: collections.deque[tuple[str, object]] = collections.deque()
        self._lock = threading.Lock()
        self._flush_scheduled = False

    def _post(self, kind: str, value: object) -> None:
        if asyncio._get_running_loop() is self._loop:  # the loop's own code (the recogniser)
            self._deliver(kind, value)  # no wake-up through the loop's pipe needed
            return
        self._incoming.append((kind, value))
        with self._lock:
            if self._flush_scheduled:  # a wake-up is on its way and will take this one too
                return
            self._flush_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _flush(self) -> None:
        with self._lock:  # before draining: a post after this point schedules its own flush
            self._flush_scheduled = False
        incoming = self._incoming
        while incoming:
            self._deliver(*incoming.popleft())

    def _deliver(self, kind: str, value: object) -> None:
        if kind != _ITEM:
            self._ended = True
        self._queue.put_nowait((kind, value))

    def put(self, item: T) -> None:
        self._post(_ITEM, item)

    def fail(self, error: ProviderError) -> None:
        self._post(_ERROR, error)

    def end(self) -> None:
        self._post(_END, None)

    def abandon(self) -> None:
        """From the loop's thread: the consumer is gone; pending deadlines stay silent."""
        self._ended = True

    def deadline(
        self, seconds: float, on_timeout: Callable[[], ProviderError]
    ) -> asyncio.TimerHandle:
        """From the loop's thread: fail with `on_timeout()` unless the end comes within `seconds`
        (the error is only built, and logged, when the deadline passes first)."""

        def expire() -> None:
            if not self._ended:
                self._deliver(_ERROR, on_timeout())

        return self._loop.call_later(seconds, expire)

    async def get(
        self,
        timeout: float | None = None,
        on_timeout: Callable[[], ProviderError] | None = None,
    ) -> T:
        """The next item; raises the error a thread reported, `StopAsyncIteration` at the end,
        and `on_timeout()` when nothing came within `timeout` seconds (None: wait for ever)."""
        if self._closed:
            raise StopAsyncIteration
        if not self._queue.empty():  # no timer, no suspension: chunks often come in runs
            kind, value = self._queue.get_nowait()
        else:
            try:  # a timeout, not wait_for: that wraps every wait in a task of its own
                async with asyncio.timeout(timeout):
                    kind, value = await self._queue.get()
            except TimeoutError:
                self._closed = True
                assert on_timeout is not None, "a timeout needs its error"
                raise on_timeout() from None
        if kind == _ITEM:
            return value  # type: ignore[return-value]
        self._closed = True
        if kind == _ERROR:
            raise value  # type: ignore[misc]
        raise StopAsyncIteration

    async def iterate(
        self,
        timeout: float | None = None,
        on_timeout: Callable[[], ProviderError] | None = None,
    ) -> AsyncIterator[T]:
        """All items until the end, each awaited with `timeout`."""
        while True:
            try:
                item = await self.get(timeout, on_timeout)
            except StopAsyncIteration:
                return
            yield item


async def run_in_daemon(
    func: Callable[[], T], timeout: float, on_timeout: Callable[[], ProviderError]
) -> T:
    """`func()` on a daemon thread, awaited for at most `timeout` seconds.

    Unlike `asyncio.to_thread`, a call that never returns (an SDK without a usable timeout)
    does not block `asyncio.run()` at exit; the thread is left to end on its own.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            future.set_exception(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result: object = func()
            ok = True
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:
            pass

    spawn(work, name="provider-call")
    # asyncio.wait, not wait_for: a TimeoutError raised by `func` itself must stay its own.
    done, _ = await asyncio.wait({future}, timeout=timeout)
    if not done:
        future.cancel()
        raise on_timeout()
    return future.result()


class Job:
    """One piece of work handed to `spawn`: `is_alive()` and `join()`, as a thread has."""

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...], name: str) -> None:
        self.target, self.args, self.name = target, args, name
        self._done = threading.Event()

    def is_alive(self) -> bool:
        return not self._done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def run(self) -> None:
        threading.current_thread().name = self.name
        try:
            self.target(*self.args)
        except Exception:
            logger.exception("%s failed", self.name)
        finally:
            self._done.set()


class _Daemons:
    """Reusable daemon threads; a caller never waits for one to start.

    A job goes to an idle thread when there is one; otherwise a starter thread (the only one
    ever to wait in `Thread.start()`) adds a thread for it. Threads idle for `IDLE_S` end, so
    the number alive follows the work's peak (jobs may block for as long as they like: a
    websocket's loop, a stream). An idle thread holds a token in `_idle`; taking a token claims
    a thread for exactly one queued job.
    """

    IDLE_S = 30.0

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._wanted: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._starter: threading.Thread | None = None
        self.waiting = 0  # threads waiting for a job

    def _count_waiting(self, change: int) -> None:
        with self._lock:
            self.waiting += change

    def submit(self, job: Job) -> None:
        self._jobs.put(job)
        if self._idle.acquire(blocking=False):
            return
        with self._lock:
            if self._starter is None:  # once per process
                self._starter = threading.Thread(
                    target=self._start_threads, name="daemon-starter", daemon=True
                )
                self._starter.start()
        self._wanted.put(None)

    def _start_threads(self) -> None:
        while True:
            self._wanted.get()
            threading.Thread(target=self._work, name="daemon", daemon=True).start()

    def _work(self) -> None:
        while True:
            self._count_waiting(1)
            try:
                job: Job | None = self._jobs.get(timeout=self.IDLE_S)
            except queue.Empty:
                job = None
            self._count_waiting(-1)
            if job is None:
                # Leave only if no job has claimed this thread's token meanwhile.
                if self._idle.acquire(blocking=False):
                    return
                continue
            job.run()
            threading.current_thread().name = "daemon"
            self._idle.release()


_daemons = _Daemons()


def waiting_threads() -> int:
    """Threads of `spawn` alive and waiting for work (they end after `_Daemons.IDLE_S`): the
    rest of the process's threads are the ones doing something."""
    return _daemons.waiting


def spawn(target: Callable[..., object], *args: Any, name: str) -> Job:
    """Run `target(*args)` on a daemon thread, returning at once (never waits for a thread to
    start, so it is safe on the event loop's thread). An exception is logged."""
    job = Job(target, args, name)
    _daemons.submit(job)
    return job
