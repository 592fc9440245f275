"""What the service adds to an upload turn beyond the providers' own time, and how fast a
worker's progress event reaches the client.

Starts a web process and a speech worker on a Redis database of its own with a
throw-away SQLite database and media folder, then:
1. runs N voice turns (an espeak-ng utterance uploaded as one binary frame) and times, at the
   client, upload → asr_result → text_response → tts_complete;
2. takes the providers' own time in each turn from what its steps recorded (time spent waiting
   for the ASR result, the LLM's pieces and the TTS chunks): the rest is the service's overhead
   (decoding, storage, queue hops, database, channel layer); `marks_ms` gives, as medians, when
   the client heard each event and each step's `turn_progress`, and `hops_ms` the gaps between
   the steps, to tell where the overhead goes;
3. publishes `video_progress` events to a connected session through the channel layer, as a
   render worker does, and times their arrival at the client.

    .venv/bin/python bench/turn.py --turns 10 --events 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from bench.stack import Stack, percentile  # noqa: E402

UTTERANCE = "what is the weather like in london today"


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def p99(values: list[float]) -> float:
    return round(percentile(values, 0.99), 1)


async def turn(url: str, audio: bytes) -> dict[str, float]:
    import websockets

    async with websockets.connect(url, max_size=None) as ws:
        json.loads(await ws.recv())
        marks: dict[str, float] = {}
        start = time.perf_counter()
        await ws.send(audio)
        while "tts_complete" not in marks or "synthesize_done" not in marks:
            frame = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(frame, bytes):
                continue
            event = json.loads(frame)
            if event["type"] == "error":
                raise RuntimeError(event)
            if event["type"] in {"asr_result", "text_response", "tts_start", "tts_complete"}:
                marks.setdefault(event["type"], (time.perf_counter() - start) * 1000)
            elif event["type"] == "turn_progress":
                name = f"{event['step']}_{event['state']}"
                marks.setdefault(name, (time.perf_counter() - start) * 1000)
        return marks


async def progress_latency(url: str, events: int, rate: float) -> list[float]:
    import websockets

    from chat.events import publish

    latencies: list[float] = []
    async with websockets.connect(url, max_size=None) as ws:
        session_id = json.loads(await ws.recv())["session_id"]

        async def receive() -> None:
            while len(latencies) < events:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if event["type"] == "video_progress":
                    latencies.append((time.time() - event["sent_at"]) * 1000)

        receiver = asyncio.create_task(receive())
        for n in range(events):
            await publish(
                session_id,
                {
                    "type": "video_progress",
                    "task_id": "bench",
                    "progress": n,
                    "stage": "rendering",
                    "sent_at": time.time(),
                },
            )
            await asyncio.sleep(1 / rate)
        await receiver
    return latencies


def provider_times() -> dict[str, float]:
    """The providers' own time in the last turn, as its steps recorded it."""
    from chat.models import Message

    deadline = time.monotonic() + 10
    while True:  # the worker stores the timings just after tts_complete goes out
        reply = Message.objects.filter(role="assistant").latest("id")
        if "tts_ms" in reply.timings or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    user = reply.reply_to
    return {
        "asr": user.timings["asr_ms"],
        "llm": reply.timings["llm_ms"],
        "tts": reply.timings["tts_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="progress events per second")
    parser.add_argument("--redis-db", type=int, help="default: a free one of 1-15")
    args = parser.parse_args()
    stack = Stack(args.redis_db)
    try:
        stack.prepare()
        import django

        from tests.audio import speak

        django.setup()
        _web, port = stack.start_web()
        stack.start_worker("speech", "bench")
        url = f"ws://127.0.0.1:{port}/ws/chat/?mode=voice"
        audio = speak(UTTERANCE).read_bytes()
        asyncio.run(turn(url, audio))  # warm-up: models load in the worker
        turns, providers = [], []
        for _ in range(args.turns):
            turns.append(asyncio.run(turn(url, audio)))
            providers.append(provider_times())
        asyncio.run(progress_latency(url, 20, args.rate))  # warm-up
        latencies = asyncio.run(progress_latency(url, args.events, args.rate))
    finally:
        stack.close()
    total = [t["tts_complete"] for t in turns]
    provider_total = [p["asr"] + p["llm"] + p["tts"] for p in providers]
    result = {
        "turns": args.turns,
        "client_ms": {
            k: median([t[k] for t in turns])
            for k in ("asr_result", "text_response", "tts_start", "tts_complete")
        },
        "providers_ms": {k: median([p[k] for p in providers]) for k in ("asr", "llm", "tts")},
        "service_overhead_ms": median([t - p for t, p in zip(total, provider_total, strict=True)]),
        "overhead_until_asr_result_ms": median(
            [t["asr_result"] - p["asr"] for t, p in zip(turns, providers, strict=True)]
        ),
        # where the service's time goes between the steps, as the client hears of them
        "hops_ms": {
            "upload → transcribe started": median([t["transcribe_started"] for t in turns]),
            "transcribe done → reply started": median(
                [t["reply_started"] - t["transcribe_done"] for t in turns]
            ),
            "reply done → synthesize started": median(
                [t["synthesize_started"] - t["reply_done"] for t in turns]
            ),
            "tts_complete → synthesize done": median(
                [t["synthesize_done"] - t["tts_complete"] for t in turns]
            ),
        },
        "marks_ms": {k: median([t[k] for t in turns]) for k in sorted(turns[0], key=turns[0].get)},
        "progress_event_ms": {
            "events": len(latencies),
            "p50": median(latencies),
            "p99": p99(latencies),
            "max": round(max(latencies), 1),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
