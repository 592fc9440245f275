"""DashScope's websocket connections, kept per event loop and reused from task to task.

Recognition (Paraformer) and speech (CosyVoice) are tasks on websockets to the same endpoint.
The service runs one task after another on a connection: after task-finished the client may
send the next run-task (task-failed closes the connection). So a connection whose task
finished waits in its loop's `Connections` for the next task of its kind, and a task starts
with its run-task instead of a handshake (a TCP and TLS handshake, and a round trip, per
utterance and per sentence otherwise). The sockets are aiohttp's, the transport of the SDK's
own asyncio requests, in the loop's websocket session (`dashscope_websocket_session`).

A kind may also have sockets opened ahead (`take(..., ahead=n)`: CosyVoice's
DASHSCOPE_TTS_PRECONNECT) while it is in use. A socket left waiting RENEW_AFTER_S is closed
(and replaced while its kind is in use); nothing is opened ahead for a kind unused for
KEEP_FOR_S. One the service closed meanwhile is found out by the task that takes it (its
run-task meets the close): `Socket.lost` tells the caller to try once more on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import weakref
from dataclasses import dataclass

import aiohttp
from dashscope.audio.tts_v2.speech_synthesizer import Request

from chat.providers.cloud import (
    close_before_sessions,
    dashscope_websocket_session,
    websocket_tls_context,
)
from echoproject import metrics

log = logging.getLogger(__name__)

RENEW_AFTER_S = 30.0  # a waiting socket is replaced after this (the SDK's own pool: 25-35 s)
KEEP_FOR_S = 300.0  # sockets are opened ahead for a kind used within this time
MAINTAIN_EVERY_S = 5.0
CLOSE_WAIT_S = 2.0  # a closing socket waits this long for the service's close frame

# websocket URL, API key and the kind of task ("asr", "tts"): what a socket waits for
Service = tuple[str, str, str]


@dataclass(eq=False)
class Socket:
    service: Service
    ws: aiohttp.ClientWebSocketResponse
    opened_at: float
    idle_since: float
    lost: bool = False  # the connection went away under a task

    def usable(self, now: float) -> bool:
        return not (self.lost or self.ws.closed) and now - self.idle_since < RENEW_AFTER_S


@functools.lru_cache(maxsize=8)
def _proxy_for(url: str) -> str | None:
    """The proxy of the environment for this websocket URL (`HTTPS_PROXY` for `wss://`, as
    websocket-client reads it; `NO_PROXY` honoured), read once per process (it reads
    `~/.netrc` too: not on the loop at every connection)."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    plain = URL(url).with_scheme("https" if url.startswith("wss:") else "http")
    with contextlib.suppress(LookupError):
        proxy, _ = get_env_proxy_for_url(plain)
        return str(proxy)
    return None


class Connections:
    """The DashScope sockets of one event loop: those waiting for a task, per service, and a
    maintenance task that renews them, opens those asked for ahead, and closes the waiting
    ones when it ends (`close()`, or the end of the loop: `asyncio.run` cancels it)."""

    def __init__(self) -> None:
        self.closed = False
        self._idle: dict[Service, list[Socket]] = {}
        self._used: dict[Service, float] = {}
        self._ahead: dict[Service, tuple[int, float]] = {}  # how many, connect timeout
        self._wake = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._maintainer = asyncio.get_running_loop().create_task(
            self._maintain_until_closed(), name="dashscope-connections"
        )

    def take(
        self, service: Service, ahead: int = 0, connect_timeout_s: float = 5.0
    ) -> Socket | None:
        """An open socket for `service`, or None: the caller opens one (`open`). `ahead`:
        how many to keep open beyond those in use while the service is used (each opened
        within `connect_timeout_s`)."""
        now = time.monotonic()
        self._used[service] = now
        self._ahead[service] = (ahead, connect_timeout_s)
        waiting = self._idle.get(service, [])
        found = None
        while waiting and found is None:
            sock = waiting.pop()  # the one used last
            if sock.usable(now):
                found = sock
            else:
                self.discard(sock)
        if ahead and len(waiting) < ahead:
            self._wake.set()  # open more ahead
        return found

    async def open(
        self, service: Service, connect_timeout_s: float, headers: dict[str, str] | None = None
    ) -> Socket:
        """A new socket for `service` (raises aiohttp's errors, or TimeoutError), opened with
        `headers` (by default those the SDK's CosyVoice request opens its sockets with)."""
        url, api_key, _ = service
        if headers is None:
            headers = Request(api_key, "", "").get_websocket_headers(headers=None, workspace=None)
        async with asyncio.timeout(connect_timeout_s):
            ws = await dashscope_websocket_session().ws_connect(
                url,
                headers=headers,
                proxy=_proxy_for(url),
                ssl=websocket_tls_context() if url.startswith("wss:") else True,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_WAIT_S),
                max_msg_size=0,
            )
        metrics.dashscope_connection_opened(service[2])
        now = time.monotonic()
        return Socket(service, ws, now, now)

    def give_back(self, sock: Socket) -> None:
        """A socket whose task finished: it waits for the next task."""
        if self.closed or sock.ws.closed:
            self.discard(sock)
            return
        sock.idle_since = time.monotonic()
        self._idle.setdefault(sock.service, []).append(sock)

    def discard(self, sock: Socket) -> None:
        """Close without waiting (the close handshake may take a round trip)."""
        if sock.ws.closed:
            return
        try:
            closing = asyncio.get_running_loop().create_task(sock.ws.close())
        except RuntimeError:  # no loop left (a task abandoned at the loop's end)
            return
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def ready(self, service: Service) -> int:
        now = time.monotonic()
        return sum(1 for sock in self._idle.get(service, []) if sock.usable(now))

    async def close(self) -> None:
        self._maintainer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._maintainer

    async def _maintain_until_closed(self) -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(MAINTAIN_EVERY_S):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self._maintain()
                except Exception:  # noqa: BLE001 - the next round tries again
                    log.exception("keeping DashScope sockets failed")
        except BaseException as exc:  # cancelled (closed), or its loop is gone
            self.closed = True
            for waiting in self._idle.values():
                for sock in waiting:
                    self.discard(sock)
            self._idle.clear()
            if self._closing and not isinstance(exc, GeneratorExit):  # a loop to wait on
                await asyncio.wait(set(self._closing), timeout=CLOSE_WAIT_S)
            raise

    async def _maintain(self) -> None:
        now = time.monotonic()
        wanted: list[Service] = []
        for service in set(self._idle) | set(self._used):
            waiting = self._idle.pop(service, [])
            keep = [sock for sock in waiting if sock.usable(now)]
            for sock in waiting:
                if sock not in keep:
                    self.discard(sock)
            if keep:
                self._idle[service] = keep
            if service in self._used and now - self._used[service] >= KEEP_FOR_S:
                del self._used[service]  # the service went quiet: open nothing ahead for it
            elif service in self._used:
                wanted += [service] * (self._ahead.get(service, (0, 0.0))[0] - len(keep))
        for service in wanted:
            try:
                sock = await self.open(service, self._ahead[service][1])
            except Exception:  # noqa: BLE001 - refused or unreachable: not until the next use
                log.debug("opening a DashScope socket ahead failed", exc_info=True)
                self._used.pop(service, None)
                continue
            self.give_back(sock)


_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Connections] = (
    weakref.WeakKeyDictionary()
)


def connections() -> Connections:
    """The running loop's sockets."""
    loop = asyncio.get_running_loop()
    found = _connections.get(loop)
    if found is None or found.closed:
        found = Connections()
        _connections[loop] = found
    return found


def close_connections() -> None:
    """Close every loop's waiting sockets (from any thread; a loop's own close goes on without
    being waited for). The next task opens new ones."""
    for loop, found in list(_connections.items()):
        if loop.is_closed():
            continue
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            asyncio.run_coroutine_threadsafe(found.close(), loop)
    _connections.clear()


async def close_running() -> None:
    """Close the running loop's waiting sockets, and wait for them to close (a loop that ends:
    `chat.providers.cloud.close_dashscope_http_session` calls this before closing the loop's
    sessions, which would cut them)."""
    found = _connections.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()


close_before_sessions(close_running)
