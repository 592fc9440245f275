"""What avatar voices cost: checking a sample in the admin request, and CosyVoice's time to the
first audio with a preset, a ready cloned voice, and a cloned voice deleted at DashScope (the
sentence that finds out pays a refused task before the preset speaks; later sentences skip it).

CosyVoice runs through the real SDK against the loopback DashScope (tests/fakes), so the
figures are this service's own overhead (SDK, sockets, fallback), not the cloud's latency.
Pre-connected sockets off (every sentence opens its connection) and on (2 per voice). Figures
are medians over --runs runs; variants are interleaved.

    .venv/bin/python bench/voices.py --runs 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from avatars.samples import inspect_sample  # noqa: E402
from bench.providers import machine  # noqa: E402
from chat.providers.base import Voice  # noqa: E402
from chat.providers.tts import dashscope as cosyvoice  # noqa: E402
from chat.providers.tts.dashscope import DashScopeTTS  # noqa: E402
from chat.providers.tts.enrollment import CosyVoiceEnrollment  # noqa: E402
from tests.fakes.dashscope_server import DashScopeServer  # noqa: E402
from tests.voice_samples import encode_sample  # noqa: E402

TEXT = "I can help you plan a trip to Lisbon in May."
URL = "https://media.example.test/voices/sample.wav"


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def sample_checks(runs: int) -> list[tuple[str, str, str]]:
    rows = []
    for label, container, codec in [
        ("WAV 16-bit", "wav", "pcm_s16le"),
        ("MP3", "mp3", "libmp3lame"),
        ("M4A (AAC)", "ipod", "aac"),
    ]:
        data = encode_sample(60, container, codec)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            inspect_sample(data)
            times.append(time.perf_counter() - started)
        rows.append((f"sample check, 60 s {label}", median_ms(times), f"{len(data) // 1024} KiB"))
    return rows


async def first_chunk(tts: DashScopeTTS, voice: Voice) -> float:
    started = time.perf_counter()
    first = 0.0
    async for _ in tts.stream(TEXT, voice, "en-US"):
        first = first or time.perf_counter() - started
    return first


async def speaking(runs: int, preconnect: int) -> list[tuple[str, str, str]]:
    tts = DashScopeTTS(settings.DASHSCOPE_TTS_MODEL, "longxiaochun_v2", 10.0, 5.0, preconnect)
    enrollment = CosyVoiceEnrollment(settings.DASHSCOPE_TTS_MODEL, 10.0)
    ready = enrollment.create(URL, "bench")
    deleted = enrollment.create(URL, "gone")
    enrollment.delete(deleted)
    variants = {
        "preset": Voice("longwan_v2"),
        "ready cloned voice": Voice("longwan_v2", ready),
        "deleted cloned voice, first sentence": Voice("longwan_v2", deleted),
        "deleted cloned voice, next sentences": Voice("longwan_v2", deleted),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for voice in variants.values():  # warm-up: sockets opened ahead, SDK imported
        await first_chunk(tts, voice)
    for _ in range(runs):
        for name, voice in variants.items():
            if name.endswith("first sentence"):
                tts.forget_refusals()
            if preconnect:
                await asyncio.sleep(0.3)  # let the sockets taken be replaced
            times[name].append(await first_chunk(tts, voice))
    tts.close()
    label = f"{preconnect} opened ahead, connections reused"
    return [
        (f"CosyVoice first audio, {name}", median_ms(values), label)
        for name, values in times.items()
    ]


async def main(runs: int) -> None:
    server = DashScopeServer().start()
    settings.DASHSCOPE_API_KEY = server.api_key
    settings.DASHSCOPE_HTTP_BASE_URL = server.http_base_url
    settings.DASHSCOPE_WEBSOCKET_BASE_URL = server.websocket_url
    cosyvoice.log.disabled = True  # the fallback's warning once per refused sentence
    try:
        rows = sample_checks(runs)
        rows += await speaking(runs, 0)
        rows += await speaking(runs, 2)
    finally:
        server.stop()
    print(f"Machine: {machine()}; medians of {runs} runs")
    print()
    print("| What | Median | Notes |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {' | '.join(row)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    asyncio.run(main(parser.parse_args().runs))
