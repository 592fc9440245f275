"""CPU per DashScope speech task on one event loop, as a web process runs them: a Paraformer
utterance (half a second of audio in 100 ms chunks, then its final text) and a CosyVoice
sentence, one after another, against the loopback DashScope (tests/fakes), over plain `ws://`
and over TLS (`wss://`, as DashScope is reached in production; the fake's own CA added to a
bundle of the system's CA certificates, WEBSOCKET_CLIENT_CA_BUNDLE).

CPU is this process's (`time.process_time`), the in-process fake's share included; the figure
is CPU per task, median over rounds. Run it on two versions of the code to compare them.

    .venv/bin/python -m bench.dashscope_tasks --tasks 40 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.fakes.tls import loopback_tls  # noqa: E402

SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")
# The fake's CA and a bundle of the system's CAs with it, trusted before any TLS context is
# made: websocket-client's and this code's through WEBSOCKET_CLIENT_CA_BUNDLE, aiohttp's
# default one (made at its import) through SSL_CERT_FILE.
FOLDER = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
CA, SERVER_TLS = loopback_tls(FOLDER)
BUNDLE = FOLDER / "bundle.pem"
BUNDLE.write_bytes((SYSTEM_CAS.read_bytes() if SYSTEM_CAS.exists() else b"") + CA.read_bytes())
os.environ["WEBSOCKET_CLIENT_CA_BUNDLE"] = str(BUNDLE)
os.environ["SSL_CERT_FILE"] = str(BUNDLE)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from bench.providers import machine  # noqa: E402
from chat.providers.asr.dashscope import DashScopeASR  # noqa: E402
from chat.providers.cloud import forget_websocket_tls_context, run_once  # noqa: E402
from chat.providers.tts.dashscope import DashScopeTTS  # noqa: E402
from tests.fakes.dashscope_server import DashScopeServer  # noqa: E402

CHUNK = bytes(3200)  # 100 ms of 16 kHz PCM16


async def utterance(asr: DashScopeASR) -> None:
    stream = asr.stream("en-US", 16000)
    try:
        for _ in range(5):
            await stream.feed(CHUNK)
        await stream.finish()
        results = [hypothesis async for hypothesis in stream.results()]
        assert results and results[-1].final, results
    finally:
        await stream.close()


async def sentence(tts: DashScopeTTS) -> None:
    assert await tts.synthesize("Hello there, traveller.", "longxiaochun_v2", "en-US")


async def cpu_ms_per_task(tasks: int, asr: DashScopeASR, tts: DashScopeTTS) -> tuple[float, float]:
    """CPU per utterance and per sentence, each after a warm-up of its own kind."""
    figures = []
    for one in (lambda: utterance(asr), lambda: sentence(tts)):
        await one()
        await asyncio.sleep(0.5)  # what is opened ahead is open
        start = time.process_time()
        for _ in range(tasks):
            await one()
        figures.append(1000 * (time.process_time() - start) / tasks)
    return figures[0], figures[1]


def main(tasks: int, rounds: int) -> None:
    plain, tls = DashScopeServer().start(), DashScopeServer(tls=SERVER_TLS).start()
    settings.DASHSCOPE_API_KEY = plain.api_key
    tls.api_key = plain.api_key
    figures: dict[str, list[tuple[float, float]]] = {"ws://": [], "wss://": []}
    try:
        for _ in range(rounds):
            for name, server in (("ws://", plain), ("wss://", tls)):
                settings.DASHSCOPE_WEBSOCKET_BASE_URL = server.websocket_url
                forget_websocket_tls_context()
                asr = DashScopeASR(
                    settings.DASHSCOPE_ASR_MODEL, settings.DASHSCOPE_FILE_ASR_MODEL, 10.0, 5.0
                )
                tts = DashScopeTTS(settings.DASHSCOPE_TTS_MODEL, "longxiaochun_v2", 10.0, 5.0, 2)
                figures[name].append(run_once(cpu_ms_per_task(tasks, asr, tts)))
                tts.close()
    finally:
        plain.stop()
        tls.stop()
    print(f"Machine: {machine()}; {tasks} tasks of each kind a round, {rounds} rounds")
    print()
    print("| transport | CPU per utterance (ASR) | CPU per sentence (TTS) |")
    print("|---|---|---|")
    for name, values in figures.items():
        asr_ms = [a for a, _ in values]
        tts_ms = [t for _, t in values]
        asr_runs = ", ".join(f"{v:.1f}" for v in asr_ms)
        tts_runs = ", ".join(f"{v:.1f}" for v in tts_ms)
        print(
            f"| {name} | {statistics.median(asr_ms):.1f} ms ({asr_runs}) "
            f"| {statistics.median(tts_ms):.1f} ms ({tts_runs}) |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.tasks, args.rounds)
