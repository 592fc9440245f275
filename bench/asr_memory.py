"""Memory of a web process whose sessions talk with the offline recogniser at the same time.

Starts one web process (`python -m echoproject.web`, offline providers: pocketsphinx, persona,
espeak-ng) on a Redis database of its own, then, `--rounds` times: opens `--sessions` sessions
at once, each a websocket-PCM span (`asr_start`, transport websocket) that streams an espeak-ng
utterance in 100 ms PCM chunks at real-time pace, then silence until `asr_result` and the
reply's `tts_complete`. Meanwhile the web process's RSS is sampled every 0.1 s. Prints, per
round: RSS before, the peak while the sessions talked, RSS after the sessions closed and the
process went idle, how many utterances were recognised, and the time from the end of speech to
`asr_result` (what waiting for a decoder costs when more people talk than there are decoders).

    .venv/bin/python bench/asr_memory.py --sessions 10 --rounds 2 [--tree /path/to/checkout]
        [--env ASR_OFFLINE_DECODERS=4]

`--tree` runs another checkout's web process (its code, this interpreter), to measure before
and after a change in one go.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np

import bench.stack as stack_module
from bench.stack import Stack
from harness.audio import read_wav, speak
from harness.procs import rss_mb, wait_idle

SENTENCE = "i would like to order a pizza"
CHUNK_S = 0.1


async def one_session(url: str, pcm: bytes, results: list[dict[str, float | str]]) -> None:
    """Talk once over a websocket-PCM span; record when the final text and reply came."""
    import websockets

    step = int(16000 * CHUNK_S) * 2
    silence = b"\x00\x00" * (step // 2)
    async with websockets.connect(url, max_size=None, open_timeout=120) as ws:
        while json.loads(await ws.recv()).get("type") != "init":
            pass
        await ws.send(
            json.dumps(
                {
                    "type": "asr_start",
                    "language": "en-US",
                    "transport": "websocket",
                    "format": "pcm16",
                    "sample_rate": 16000,
                }
            )
        )
        marks: dict[str, float | str] = {}
        done = asyncio.Event()

        async def read() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                kind = event.get("type")
                if kind == "asr_result" and event.get("is_final", True):
                    marks.setdefault("asr_result", time.monotonic())
                    marks.setdefault("text", event.get("text", ""))
                elif kind == "error":
                    marks.setdefault("error", event.get("code", "?"))
                elif kind == "tts_complete":
                    marks["tts_complete"] = time.monotonic()
                    done.set()

        reader = asyncio.create_task(read())
        start, sent = time.monotonic(), 0
        for offset in range(0, len(pcm), step):
            await asyncio.sleep(max(0.0, start + sent * CHUNK_S - time.monotonic()))
            await ws.send(pcm[offset : offset + step])
            sent += 1
        marks["speech_end"] = start + sent * CHUNK_S
        deadline = time.monotonic() + 120
        while not done.is_set() and "error" not in marks and time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, start + sent * CHUNK_S - time.monotonic()))
            await ws.send(silence)
            sent += 1
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        results.append(marks)


async def round_of(
    url: str, pcm: bytes, sessions: int, results: list[dict[str, float | str]]
) -> None:
    await asyncio.gather(
        *(one_session(url, pcm, results) for _ in range(sessions)), return_exceptions=True
    )


def sample_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], rss_mb(pid))
        except (OSError, RuntimeError):
            return
        stop.wait(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tree", help="run this checkout's web process instead")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the started server"
    )
    parser.add_argument("--redis-db", type=int, help="default: a free one of 1-15")
    args = parser.parse_args()
    if args.tree:
        stack_module.ROOT = Path(args.tree).resolve()

    utterance, rate = read_wav(speak(SENTENCE, rate=160, sample_rate=16000))
    pad = np.zeros(rate // 2, dtype=np.int16)
    pcm = np.concatenate([pad, utterance]).tobytes()
    offline = {"ASR_BACKEND": "pocketsphinx", "LLM_BACKEND": "persona", "TTS_BACKEND": "espeak"}
    stack = Stack(args.redis_db, prefix="echo-bench-asr-memory-", **offline)
    stack.env.pop("DASHSCOPE_API_KEY", None)
    stack.env.update(dict(item.split("=", 1) for item in args.env))
    try:
        stack.prepare()
        server, port = stack.start_web()
        url = f"ws://127.0.0.1:{port}/ws/chat/"
        wait_idle(server.pid)
        for number in range(1, args.rounds + 1):
            before = rss_mb(server.pid)
            peak, stop = [before], threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(server.pid, stop, peak))
            sampler.start()
            results: list[dict[str, float | str]] = []

            asyncio.run(round_of(url, pcm, args.sessions, results))
            stop.set()
            sampler.join()
            wait_idle(server.pid)
            finals = [
                (float(r["asr_result"]) - float(r["speech_end"])) * 1000
                for r in results
                if "asr_result" in r
            ]
            heard = sum(1 for r in results if "pizza" in str(r.get("text", "")))
            row = {
                "round": number,
                "sessions": args.sessions,
                "rss_before_mb": round(before, 1),
                "rss_peak_mb": round(peak[0], 1),
                "rss_after_mb": round(rss_mb(server.pid), 1),
                "asr_results": len(finals),
                "heard_pizza": heard,
                "replies": sum(1 for r in results if "tts_complete" in r),
                "errors": sorted({str(r["error"]) for r in results if "error" in r}),
                "speech_end_to_final_ms_p50": round(statistics.median(finals)) if finals else None,
                "speech_end_to_final_ms_max": round(max(finals)) if finals else None,
                "env": args.env,
                "tree": str(stack_module.ROOT),
            }
            print(json.dumps(row), flush=True)
    finally:
        stack.close()


if __name__ == "__main__":
    main()
