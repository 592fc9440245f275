"""The web process: daphne serving echoproject.asgi with the service's own settings.

`python -m echoproject.web [daphne options]` listens on HOST:PORT (read in settings) and lets WebSocket messages
through up to twice MAX_UPLOAD_BYTES, so an oversized upload is answered with ERR_TOO_LARGE
instead of a dropped connection (daphne's own default cap is 1 MiB).

With `WEB_PROCESSES` above 1 (default: one per core) it starts that many daphne processes on
the same HOST:PORT and watches them (echoproject/webprocs.py): each binds its own socket with
SO_REUSEPORT, so the kernel spreads new connections over them, and one that dies is started
again while the others go on serving.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
    from echoproject.env import exit_on_settings_error

    exit_on_settings_error()
    from django.conf import settings

    from echoproject import webprocs

    if settings.WEB_PROCESSES > 1 and not webprocs.is_child():
        sys.exit(webprocs.supervise(settings.WEB_PROCESSES, argv))
    from daphne.cli import CommandLineInterface

    if webprocs.is_child():
        webprocs.end_with_supervisor()
        try:
            fileno, family = webprocs.shared_port_socket(settings.WEB_HOST, settings.WEB_PORT)
        except OSError as exc:  # taken by another program, an address not on this machine
            print(
                f"web: cannot listen on {settings.WEB_HOST}:{settings.WEB_PORT}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)
        listen = ["--endpoint", listen_on_adopted_socket(fileno, family)]
    else:
        listen = ["--bind", settings.WEB_HOST, "--port", str(settings.WEB_PORT)]
    args = [
        *listen,
        "--websocket-max-message-size",
        str(2 * settings.MAX_UPLOAD_BYTES),
        "--websocket-max-frame-size",
        str(2 * settings.MAX_UPLOAD_BYTES),
        *(["--proxy-headers"] if settings.TRUST_PROXY_HEADERS else []),
        *argv,
        "echoproject.asgi:application",
    ]
    close_oversized_messages_cleanly()
    forget_own_metrics_at_exit()
    preload()
    tune_gc()
    watch_loop_lag()
    cli = CommandLineInterface()
    cli.server_class = _server_waiting_for_every_consumer()
    cli.run(args)


def forget_own_metrics_at_exit() -> None:
    """The sessions this process counts as open stop counting when it exits (a process that is
    killed is found dead at the next scrape instead: echoproject.metrics)."""
    import atexit

    from echoproject import metrics

    atexit.register(metrics.on_process_exit)


def listen_on_adopted_socket(fileno: int, family: int) -> str:
    """An endpoint description daphne will listen on: the already bound socket `fileno`
    (twisted's own `fd:` endpoint is not in the versions daphne runs with)."""
    from daphne import server
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString

    description = f"adopted-socket-{fileno}"

    def server_from_string(reactor: object, text: str) -> object:
        if text == description:
            return AdoptedStreamServerEndpoint(reactor, fileno, family)
        return serverFromString(reactor, text)

    server.serverFromString = server_from_string
    return description


def close_oversized_messages_cleanly() -> None:
    """Make daphne answer a message over the size limit with the close frame 1009 that
    docs/protocol.md promises, instead of autobahn's default for servers (`failByDrop`): an
    abort of the TCP connection, which the client sees as 1006 while it is still sending.
    Other protocol failures (invalid UTF-8: 1007) get their close frame the same way; a client
    that never answers it is dropped after autobahn's closing-handshake timeout."""
    from daphne import server
    from daphne.ws_protocol import WebSocketFactory

    class ClosingWebSocketFactory(WebSocketFactory):
        def resetProtocolOptions(self) -> None:
            super().resetProtocolOptions()
            self.failByDrop = False

    server.WebSocketFactory = ClosingWebSocketFactory


def _server_waiting_for_every_consumer() -> type:
    """daphne's Server, whose shutdown waits until every cancelled consumer has finished.

    daphne cancels each application instance on SIGTERM/SIGINT and waits for them with a plain
    `asyncio.gather`, which returns at the first instance that ends cancelled: the reactor then
    stopped while the other sessions were still ending, their tasks were destroyed pending
    ("Task was destroyed but it is pending!"), and a WebRTC peer left open kept aiortc's
    decoder thread, and so the process, alive."""
    import asyncio
    import logging

    from daphne.server import Server
    from twisted.internet import defer

    logger = logging.getLogger("daphne.server")

    class WaitingServer(Server):
        def kill_all_applications(self) -> defer.Deferred:
            instances = [
                details["application_instance"]
                for details in self.connections.values()
                if details.get("application_instance") is not None
                and not details["application_instance"].done()
            ]
            for instance in instances:
                instance.cancel()
            logger.info("Killed %i pending application instances", len(instances))
            return defer.Deferred.fromFuture(asyncio.gather(*instances, return_exceptions=True))

    return WaitingServer


def preload() -> None:
    """Import, at start-up, what sessions use: the WebRTC media stack (aiortc, PyAV, libopus)
    and the configured providers' backends, and let those make their process-wide state (the
    DashScope SDK's TLS contexts). Imported by the first session instead, they held the event
    loop, and every other session's audio in the process, for 0.3-0.5 s of CPU each (on a
    restart all sessions come back at once); and being loaded before `tune_gc` freezes the
    heap, none of it is scanned by the collector's full passes later."""
    import chat.realtime.handler  # noqa: F401 - the media stack a WebRTC session runs on
    from chat.providers import registry

    for stage in ("asr", "llm", "tts"):
        registry.backend_class(stage).preload()


# young generation every 50 000 net allocations, the middle one every 10 of those; the oldest
# at every middle pass, as CPython's own rule allows (see tune_gc)
TUNED_GC_THRESHOLDS = (50_000, 10, 1)
IDLE_CHECK_S = 1.0  # how often the web process looks whether it is idle
IDLE_CPU_SHARE = 0.05  # idle: under 5 % of a core over the last IDLE_CHECK_S
IDLE_COLLECT_GAP_S = 5.0  # at most one idle-time full collection per this many seconds
IDLE_MIN_YOUNG = 10_000  # young objects that justify one when nothing was promoted


def tune_gc() -> None:
    """Keep the cyclic collector's passes off the message path without keeping garbage.

    Everything loaded at start-up is frozen out of the collector's sight, so no pass ever
    scans Django, Twisted and the rest again (the full passes over them were the tail latency
    at 1000 sessions, docs/benchmarks.md), and the young generation is collected less often.
    What sessions leave behind (reference cycles of consumers, tasks, exceptions) reaches the
    oldest generation, which must still be collected: its earlier threshold of 1000 meant one
    full pass per 2.5 billion net allocations, i.e. never, and the process grew ~21 MB per
    1000 sessions (bench/memory.py). Now the oldest generation is considered at every middle
    pass, under CPython's own rule (a full pass only once the objects promoted since the
    last one exceed a quarter of those it kept, so its cost stays proportional), and a full
    pass also runs when the process goes idle, so a wave of closed sessions is reclaimed
    before the next wave piles on it."""
    import gc

    from django.conf import settings

    mode = settings.WEB_GC
    if mode == "default":
        return
    gc.collect()
    gc.freeze()
    if mode == "tuned":
        gc.set_threshold(*TUNED_GC_THRESHOLDS)
        import daphne.server  # noqa: F401 - installs the asyncio reactor the call runs on
        from twisted.internet.task import LoopingCall

        LoopingCall(IdleCollector().tick).start(IDLE_CHECK_S, now=False)
    elif mode == "off":  # diagnostic only: no cyclic collection at all
        gc.disable()


LOOP_LAG_EVERY_S = 0.5


def watch_loop_lag() -> None:
    """Sample how late the event loop runs a due timer into `echo_event_loop_lag_seconds`:
    an overloaded web process shows there before its sessions' audio breaks up."""
    import daphne.server  # noqa: F401 - installs the asyncio reactor the timers run on
    from twisted.internet import reactor

    LoopLag(reactor.callLater, time.monotonic).start()


class LoopLag:
    """A timer every LOOP_LAG_EVERY_S that records how far past its due instant it ran."""

    def __init__(
        self,
        call_later: Callable[[float, Callable[[], None]], object],
        clock: Callable[[], float],
        every_s: float = LOOP_LAG_EVERY_S,
    ) -> None:
        self.call_later, self.clock, self.every_s = call_later, clock, every_s
        self.due = 0.0

    def start(self) -> None:
        self.due = self.clock() + self.every_s
        self.call_later(self.every_s, self.tick)

    def tick(self) -> None:
        from echoproject import metrics

        metrics.loop_lag(self.clock() - self.due)
        self.start()


class IdleCollector:
    """A full collection when the web process is idle and has allocated since the last one:
    a pass then delays no message, and the heap returns to what its live sessions need."""

    def __init__(self) -> None:
        self.cpu = time.process_time()
        self.last = time.monotonic()

    def tick(self) -> None:
        import gc

        cpu, now = time.process_time(), time.monotonic()
        busy = (cpu - self.cpu) / IDLE_CHECK_S
        self.cpu = cpu
        if busy > IDLE_CPU_SHARE or now - self.last < IDLE_COLLECT_GAP_S:
            return
        young, middle_passes, old_passes = gc.get_count()
        if middle_passes == 0 and old_passes == 0 and young < IDLE_MIN_YOUNG:
            return  # nothing has been promoted since the last pass: no garbage can hide there
        gc.collect()
        self.last = now
        self.cpu = time.process_time()  # the pass itself is not load


if __name__ == "__main__":
    main(sys.argv[1:])
