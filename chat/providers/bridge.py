"""Carrying results from worker threads (SDK callbacks, blocking engines) into asyncio.

SDKs and engines here call back on their own threads; the event loop must never block on them.
A `ThreadBridge` is an `asyncio.Queue` that threads fill through `loop.call_soon_threadsafe`,
and `run_in_daemon` runs a blocking call on a daemon thread so that an abandoned call (a hung
connection) can never hold up the loop's shutdown the way the default executor would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from chat.providers.base import ProviderError

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

    def _post(self, kind: str, value: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, kind, value)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

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
        try:
            kind, value = await asyncio.wait_for(self._queue.get(), timeout)
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

    threading.Thread(target=work, name="provider-call", daemon=True).start()
    # asyncio.wait, not wait_for: a TimeoutError raised by `func` itself must stay its own.
    done, _ = await asyncio.wait({future}, timeout=timeout)
    if not done:
        future.cancel()
        raise on_timeout()
    return future.result()
