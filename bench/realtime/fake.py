"""The loopback DashScope fake in a process of its own, with fixed delays, and the providers'
own time on the path to each client event that those delays make."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Any

from bench.stack import ROOT

UTTERANCE = "what is the weather like in london today"
BARGE = "stop please"
REPLY = (
    "Sure, here is what I know. London is cloudy today with light rain in the afternoon. "
    "Temperatures stay around twelve degrees until the evening. "
    "Take an umbrella if you go out later, and a warm coat too."
)


def serve(delays: dict[str, float]) -> None:
    """Child mode: run the fake with fixed delays, print its addresses, stop at stdin's end."""
    import logging

    from tests.fakes.dashscope_server import DashScopeServer

    # An interrupted reply drops its LLM stream: the fake's failed writes are expected.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    server = DashScopeServer().start()
    b = server.behaviour
    b.reply = REPLY
    b.transcript = UTTERANCE
    b.first_token_delay = delays["llm_first_token"] / 1000
    b.token_delay = delays["llm_token"] / 1000
    # The fake sleeps asr_result_delay before every result, interims included: no interims, so
    # the delay is the final's alone, counted from the end of the stream (finish-task).
    b.asr_result_delay = delays["asr_final"] / 1000
    b.asr_interim_every_bytes = 1 << 40
    b.tts_first_chunk_delay = delays["tts_first_chunk"] / 1000
    b.tts_chunk_delay = delays["tts_chunk"] / 1000
    print(
        json.dumps(
            {"http": server.http_base_url, "ws": server.websocket_url, "key": server.api_key}
        ),
        flush=True,
    )
    try:
        sys.stdin.read()
    finally:
        server.stop()


class Fake:
    """The fake's process (this package run with `--serve-fake`); `env` points the service's
    three DashScope backends at it."""

    def __init__(self, delays: dict[str, float], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.realtime", "--serve-fake", json.dumps(delays)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        addresses = json.loads(self.proc.stdout.readline())
        self.env = {
            "DASHSCOPE_API_KEY": addresses["key"],
            "DASHSCOPE_HTTP_BASE_URL": addresses["http"],
            "DASHSCOPE_WEBSOCKET_BASE_URL": addresses["ws"],
            "ASR_BACKEND": "dashscope",
            "LLM_BACKEND": "dashscope",
            "TTS_BACKEND": "dashscope",
        }

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.terminate()
        self.proc.wait(20)


def provider_ms(delays: dict[str, float]) -> dict[str, float]:
    """The providers' own time on the path from the end of the stream to each client event."""
    first_sentence = len(REPLY.split(".")[0].split())
    words = len(REPLY.split())
    asr = delays["asr_final"]
    return {
        "asr_result": asr,
        "text_response": asr + delays["llm_first_token"] + (words - 1) * delays["llm_token"],
        "first_audio": asr
        + delays["llm_first_token"]
        + (first_sentence - 1) * delays["llm_token"]
        + delays["tts_first_chunk"],
    }


def server_timings() -> dict[str, Any]:
    """Medians of what every reply recorded, the loaded capacity runs included (ms from the
    reply's start to its first LLM delta and first TTS chunk)."""
    from bench.realtime.figures import median
    from chat.models import Message

    rows = list(Message.objects.filter(role="assistant").values_list("timings", flat=True))
    keys = ("llm_first_ms", "tts_first_ms")
    return {k: median([t[k] for t in rows if k in t]) for k in keys}
