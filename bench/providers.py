"""Speed of the offline providers: real-time factor (RTF) and time to first output.

RTF is processing time divided by audio duration (below 1: faster than real time).
- pocketsphinx, file: one WAV decoded whole.
- pocketsphinx, stream: 100 ms chunks fed as fast as they are taken; RTF from the first
  feed to the final hypothesis; and, fed at real-time pace (as a microphone does), the delay
  from `finish()` to the final hypothesis, which is what a speaker waits for.
- espeak-ng TTS: synthesis time over the audio it produced, and the time to the first chunk.
- persona LLM: time to the first delta and to the whole reply.
Test speech is made by espeak-ng (tests/audio.py). Figures are medians over --runs runs.

    .venv/bin/python bench/providers.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")

import django  # noqa: E402

django.setup()

from chat.providers.asr.pocketsphinx import PocketSphinxASR  # noqa: E402
from chat.providers.base import ChatTurn  # noqa: E402
from chat.providers.llm.persona import PersonaLLM  # noqa: E402
from chat.providers.tts.espeak import EspeakTTS  # noqa: E402
from harness.audio import read_wav, speak, write_wav  # noqa: E402

UTTERANCE = (
    "i would like to order a pizza. what is the weather like today. "
    "good morning how are you. please tell me a story about a dog."
)
TTS_TEXTS = {
    "en short": ("en-US", "Hello, nice to meet you."),
    "en sentence": ("en-US", "I can help you plan a trip to Lisbon in May, when it is warm."),
    "en paragraph": (
        "en-US",
        "Lisbon is lovely in May. The days are warm and long, the crowds are still small, "
        "and the trams climb the hills past tiled houses. Start in Alfama, walk to the castle, "
        "and end the day with grilled sardines by the river.",
    ),
    "zh sentence": ("zh-CN", "你好，我是林晓。今天我们一起练习中文口语吧。"),
}
CHUNK_MS = 100
T = TypeVar("T")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def test_audio() -> tuple[bytes, int, Path]:
    pcm, rate = read_wav(speak(UTTERANCE, rate=160, sample_rate=16000))
    pad = np.zeros(rate // 2, dtype=np.int16)
    path = write_wav(
        Path("/tmp/bench-providers-utterance.wav"), np.concatenate([pad, pcm, pad]), rate
    )
    pcm, rate = read_wav(path)
    return pcm.tobytes(), rate, path


async def asr_file(asr: PocketSphinxASR, path: Path) -> float:
    started = time.perf_counter()
    await asr.recognize_file(str(path), "", "en-US")
    return time.perf_counter() - started


async def asr_stream(
    asr: PocketSphinxASR, pcm: bytes, rate: int, paced: bool
) -> tuple[float, float]:
    """(seconds from first feed to final, seconds from finish() to final)."""
    step = rate * CHUNK_MS // 1000 * 2
    stream = asr.stream("en-US", rate)
    started = time.perf_counter()
    for index, start in enumerate(range(0, len(pcm), step)):
        await stream.feed(pcm[start : start + step])
        if paced:
            await asyncio.sleep(
                max(0.0, started + (index + 1) * CHUNK_MS / 1000 - time.perf_counter())
            )
    finished = time.perf_counter()
    await stream.finish()
    async for hypothesis in stream.results():
        if hypothesis.final:
            break
    done = time.perf_counter()
    return done - started, done - finished


async def tts(engine: EspeakTTS, text: str, language: str) -> tuple[float, float, float]:
    """(seconds to first chunk, seconds in all, seconds of audio)."""
    started = time.perf_counter()
    first = 0.0
    size = 0
    async for chunk in engine.stream(text, "", language):
        if not size:
            first = time.perf_counter() - started
        size += len(chunk)
    return first, time.perf_counter() - started, size / 2 / engine.sample_rate


async def persona(llm: PersonaLLM) -> tuple[float, float]:
    turn = ChatTurn(
        persona="You are Aria, a warm and curious travel guide.",
        history=[{"role": "user", "content": "I want to visit Lisbon in May."}],
        avatar_name="Aria",
    )
    started = time.perf_counter()
    first = 0.0
    async for _ in llm.stream_reply(turn):
        first = first or time.perf_counter() - started
    return first, time.perf_counter() - started


async def repeat(runs: int, measure: Callable[[], Awaitable[T]]) -> list[T]:
    await measure()  # warm-up: loads the decoder, fills caches
    return [await measure() for _ in range(runs)]


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in lscpu.splitlines()
                if line.startswith("Model name")
            ),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


async def main(runs: int) -> None:
    pcm, rate, path = test_audio()
    seconds = len(pcm) / 2 / rate
    asr = PocketSphinxASR(timeout_s=60)
    engine = EspeakTTS(timeout_s=60)
    rows: list[tuple[str, str, str]] = []

    file_times = await repeat(runs, lambda: asr_file(asr, path))
    rows.append(
        (
            "pocketsphinx file",
            f"RTF {median(file_times) / seconds:.3f}",
            f"{seconds:.1f} s of speech",
        )
    )
    fast = await repeat(runs, lambda: asr_stream(asr, pcm, rate, paced=False))
    rows.append(
        (
            "pocketsphinx stream (fed at once)",
            f"RTF {median([t[0] for t in fast]) / seconds:.3f}",
            f"{CHUNK_MS} ms chunks",
        )
    )
    paced = await repeat(max(1, runs // 2), lambda: asr_stream(asr, pcm, rate, paced=True))
    rows.append(
        (
            "pocketsphinx stream (real-time pace)",
            f"final {median([t[1] for t in paced]) * 1000:.0f} ms after finish()",
            f"{len(paced)} runs",
        )
    )
    for label, (language, text) in TTS_TEXTS.items():
        results = await repeat(
            runs, lambda language=language, text=text: tts(engine, text, language)
        )
        audio = results[0][2]
        rows.append(
            (
                f"espeak-ng TTS, {label}",
                f"RTF {median([r[1] for r in results]) / audio:.3f}",
                f"first chunk {median([r[0] for r in results]) * 1000:.1f} ms, {audio:.1f} s of audio",
            )
        )
    llm = await repeat(runs, lambda: persona(PersonaLLM()))
    rows.append(
        (
            "persona LLM",
            f"first delta {median([r[0] for r in llm]) * 1000:.2f} ms",
            f"whole reply {median([r[1] for r in llm]) * 1000:.2f} ms",
        )
    )

    print(f"Machine: {machine()}; medians of {runs} runs")
    print()
    print("| Provider | Result | Notes |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {' | '.join(row)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
