"""The web process: daphne serving echoproject.asgi with the service's own settings.

`python -m echoproject.web [daphne options]` listens on HOST:PORT and lets WebSocket messages
through up to twice MAX_UPLOAD_BYTES, so an oversized upload is answered with ERR_TOO_LARGE
instead of a dropped connection (daphne's own default cap is 1 MiB).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
    from echoproject.env import exit_on_settings_error

    exit_on_settings_error()
    from daphne.cli import CommandLineInterface
    from django.conf import settings

    args = [
        "--bind",
        os.environ.get("HOST", "127.0.0.1"),
        "--port",
        os.environ.get("PORT", "8000"),
        "--websocket-max-message-size",
        str(2 * settings.MAX_UPLOAD_BYTES),
        "--websocket-max-frame-size",
        str(2 * settings.MAX_UPLOAD_BYTES),
        *argv,
        "echoproject.asgi:application",
    ]
    close_oversized_messages_cleanly()
    tune_gc()
    cli = CommandLineInterface()
    cli.server_class = _server_waiting_for_every_consumer()
    cli.run(args)


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


def tune_gc() -> None:
    """Keep the cyclic collector's full passes off the message path (PERFORMANCE.md: at 1000
    sessions the tail latency is gen-2 collections over long-lived objects, not CPU).

    Everything loaded at start-up is frozen out of the collector's sight, and the young
    generation is collected less often, so each pass is rarer and scans only new objects."""
    import gc

    mode = os.environ.get("WEB_GC", "tuned")
    if mode == "default":
        return
    gc.collect()
    gc.freeze()
    if mode == "tuned":
        gc.set_threshold(50_000, 50, 1000)
    elif mode == "off":  # diagnostic only: no cyclic collection at all
        gc.disable()


if __name__ == "__main__":
    main(sys.argv[1:])
