"""CPU per CosyVoice sentence over TLS (`wss://`, as DashScope is reached in production): one
TLS context per process (`chat.providers.cloud.websocket_tls_context`) against a context
built, and the CA certificates loaded, for every socket (what websocket-client, the SDK's
transport, does when it is given none); and a new connection per sentence against the
connections of one event loop reused from sentence to sentence (what a web process does).

The loopback DashScope (tests/fakes) serves TLS with a certificate of its own CA; the client
trusts a bundle of the system's CA certificates plus that CA (WEBSOCKET_CLIENT_CA_BUNDLE), so
loading it costs what loading the system's store costs. CPU is this process's, the in-process
fake's TLS included; the ways alternate.

    .venv/bin/python -m bench.tts_tls --sentences 20 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import ssl
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from bench.providers import machine  # noqa: E402
from chat.providers.cloud import forget_websocket_tls_context, run_once  # noqa: E402
from chat.providers.tts import dashscope as cosyvoice  # noqa: E402
from tests.fakes.dashscope_server import DashScopeServer  # noqa: E402
from tests.fakes.tls import loopback_tls  # noqa: E402

SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")
SHARED = cosyvoice.websocket_tls_context


def per_socket() -> ssl.SSLContext:
    """websocket-client's own way: a new context and the CA bundle loaded for each socket."""
    forget_websocket_tls_context()
    return SHARED()


def cpu_ms_per_sentence(sentences: int, reuse: bool) -> float:
    """CPU per sentence, each on a loop of its own (a new connection per sentence), or all on
    one loop, as in a web process (the connections reused, two opened ahead)."""
    tts = cosyvoice.DashScopeTTS(
        settings.DASHSCOPE_TTS_MODEL, "longxiaochun_v2", 10.0, 5.0, 2 if reuse else 0
    )
    say = functools.partial(tts.synthesize, "Hello there, traveller.", "longxiaochun_v2", "en-US")

    async def on_one_loop() -> float:
        await say()
        await asyncio.sleep(1.0)  # the sockets opened ahead are ready
        start = time.process_time()
        for _ in range(sentences):
            await say()
        return time.process_time() - start

    try:
        if reuse:
            spent = run_once(on_one_loop())
        else:
            run_once(say())
            start = time.process_time()
            for _ in range(sentences):
                run_once(say())
            spent = time.process_time() - start
        return 1000 * spent / sentences
    finally:
        tts.close()


def main(sentences: int, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    ca, server_tls = loopback_tls(folder)
    bundle = folder / "bundle.pem"
    system = SYSTEM_CAS.read_bytes() if SYSTEM_CAS.exists() else b""
    bundle.write_bytes(system + ca.read_bytes())
    os.environ["WEBSOCKET_CLIENT_CA_BUNDLE"] = str(bundle)
    server = DashScopeServer(tls=server_tls).start()
    settings.DASHSCOPE_API_KEY = server.api_key
    settings.DASHSCOPE_WEBSOCKET_BASE_URL = server.websocket_url
    start = time.process_time()
    ssl.create_default_context(cafile=str(bundle))
    load_ms = 1000 * (time.process_time() - start)
    figures: dict[tuple[str, bool], list[float]] = {}
    try:
        for _ in range(rounds):
            for reuse in (False, True):
                for way, context in (("per socket", per_socket), ("per process", SHARED)):
                    cosyvoice.websocket_tls_context = context
                    forget_websocket_tls_context()
                    figures.setdefault((way, reuse), []).append(
                        cpu_ms_per_sentence(sentences, reuse)
                    )
    finally:
        cosyvoice.websocket_tls_context = SHARED
        server.stop()
    print(f"Machine: {machine()}; {sentences} sentences a run, {rounds} runs each")
    print(f"One TLS context with the bundle ({system.count(b'BEGIN CERTIFICATE')} system CAs):")
    print(f"{load_ms:.1f} ms of CPU")
    print()
    print("| TLS context | Connections | CPU per sentence (median, runs) |")
    print("|---|---|---|")
    for (way, reuse), values in figures.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        how = "reused on one loop" if reuse else "a new one per sentence"
        print(f"| {way} | {how} | {statistics.median(values):.1f} ms ({runs}) |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    main(args.sentences, args.rounds)
