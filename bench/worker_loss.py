"""How long a turn takes to get over a lost worker, and how long a poison step takes to fail.

Starts a web process, a speech worker and a render worker (one pool process each) on a Redis
database of their own with a throw-away SQLite database and media folder, offline providers
and the `lite` renderer, then, timing at the client:
1. baseline voice turns: upload → `tts_complete`;
2. voice turns whose speech pool process is SIGKILLed as soon as `transcribe` has started:
   kill → `turn_progress` `redelivered`, and upload → `tts_complete`;
3. poison turns, the speech pool process killed each time `transcribe` starts: upload → the
   `ERR_ASR_FAILED` error (CELERY_TASK_MAX_DELIVERIES deliveries, then the give-up);
4. video turns, baseline and with the render pool process SIGKILLed at the render's first
   `video_progress`: kill → `video_progress` `redelivered`, and `video_queued` → `video_ready`.

    .venv/bin/python bench/worker_loss.py --turns 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.stack import Stack  # noqa: E402

UTTERANCE = "what is the weather like in london today"
MAX_DELIVERIES = 3
Event = dict[str, Any]


def started(step: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "turn_progress" and e["step"] == step and e["state"] == "started"


def render_running(event: Event) -> bool:
    return event["type"] == "video_progress" and event["stage"] in ("started", "redelivered")


async def turn(
    url: str,
    audio: bytes,
    last: str,
    kill_when: Callable[[Event], bool] | None = None,
    worker_pid: int = 0,
    kills: int = 1,
) -> dict[str, float]:
    """One upload turn; the times (ms from the upload) of the first event of each type, and
    of each kill. Kills the worker's pool process the first `kills` times `kill_when` passes."""
    import websockets

    from harness.procs import kill_pool_child

    async with websockets.connect(url, max_size=None) as ws:
        json.loads(await ws.recv())
        marks: dict[str, float] = {}
        killed = 0
        start = time.perf_counter()
        await ws.send(audio)
        while last not in marks:
            frame = await asyncio.wait_for(ws.recv(), 180)
            if isinstance(frame, bytes):
                continue
            event = json.loads(frame)
            now = (time.perf_counter() - start) * 1000
            name = event["type"]
            if name == "error" and last != "error":
                raise RuntimeError(event)
            if event.get("state") == "redelivered" or event.get("stage") == "redelivered":
                name = f"redelivered-{event['attempt']}"
            marks.setdefault(name, now)
            if kill_when is not None and killed < kills and kill_when(event):
                await asyncio.to_thread(kill_pool_child, worker_pid)
                killed += 1
                marks[f"kill-{killed}"] = (time.perf_counter() - start) * 1000
        return marks


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def row(label: str, values: list[float]) -> str:
    return f"| {label} | {median(values)} | {round(min(values), 1)} | {round(max(values), 1)} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=5, help="turns of each kind")
    parser.add_argument("--redis-db", type=int, help="default: a free one of 1-15")
    args = parser.parse_args()
    stack = Stack(args.redis_db, CELERY_TASK_MAX_DELIVERIES=str(MAX_DELIVERIES))
    try:
        stack.prepare()
        import django

        from tests.audio import speak

        django.setup()
        _web, port = stack.start_web()
        stack.start_worker("speech", "bench-speech")
        speech_pid = stack.procs[-1].pid
        stack.start_worker("render", "bench-render")
        render_pid = stack.procs[-1].pid
        voice = f"ws://127.0.0.1:{port}/ws/chat/?mode=voice"
        video = f"ws://127.0.0.1:{port}/ws/chat/?mode=video"
        audio = speak(UTTERANCE).read_bytes()
        asyncio.run(turn(video, audio, "video_ready"))  # warm-up: models load in the workers
        n = range(args.turns)
        plain = [asyncio.run(turn(voice, audio, "tts_complete")) for _ in n]
        lost = [
            asyncio.run(turn(voice, audio, "tts_complete", started("transcribe"), speech_pid))
            for _ in n
        ]
        poison = [
            asyncio.run(
                turn(voice, audio, "error", started("transcribe"), speech_pid, MAX_DELIVERIES)
            )
            for _ in n
        ]
        video_plain = [asyncio.run(turn(video, audio, "video_ready")) for _ in n]
        video_lost = [
            asyncio.run(turn(video, audio, "video_ready", render_running, render_pid)) for _ in n
        ]
    finally:
        stack.close()

    print(f"{args.turns} turns of each kind, CELERY_TASK_MAX_DELIVERIES={MAX_DELIVERIES}")
    print("| figure | median ms | min | max |")
    print("|---|---|---|---|")
    print(row("voice turn, upload → tts_complete", [t["tts_complete"] for t in plain]))
    print(
        row(
            "speech pool process killed in transcribe: kill → `redelivered`",
            [t["redelivered-2"] - t["kill-1"] for t in lost],
        )
    )
    print(
        row(
            "… upload → tts_complete (one lost worker)",
            [t["tts_complete"] for t in lost],
        )
    )
    print(
        row(
            f"poison transcribe ({MAX_DELIVERIES} lost workers): upload → ERR_ASR_FAILED",
            [t["error"] for t in poison],
        )
    )
    print(
        row(
            "… last kill → ERR_ASR_FAILED",
            [t["error"] - t[f"kill-{MAX_DELIVERIES}"] for t in poison],
        )
    )
    print(
        row(
            "video turn, video_queued → video_ready",
            [t["video_ready"] - t["video_queued"] for t in video_plain],
        )
    )
    print(
        row(
            "render pool process killed at its start: kill → `redelivered` progress",
            [t["redelivered-2"] - t["kill-1"] for t in video_lost],
        )
    )
    print(
        row(
            "… video_queued → video_ready (one lost worker)",
            [t["video_ready"] - t["video_queued"] for t in video_lost],
        )
    )


if __name__ == "__main__":
    main()
