"""What who-may-use-it costs: tickets, limits and signed media URLs.

In this process (Django on the stack's settings, its own Redis database): issuing and checking
a ticket, signing and checking a media URL, admitting a turn and opening a session with every
limit set (their Redis round trips). Then over a real web process: `POST /api/tickets`, and the
WebSocket handshake (connect → `init`) without a ticket and with one, one after the other.

    .venv/bin/python bench/access.py [--ops 5000] [--sessions 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable

from bench.stack import Stack, percentile  # noqa: E402

LIMITS = {
    "LIMIT_SESSIONS": "1000000",
    "LIMIT_TURNS_PER_MINUTE": "1000000",
    "LIMIT_AUDIO_S_PER_DAY": "1000000",
    "LIMIT_REPLY_CHARS_PER_DAY": "1000000",
    "LIMIT_VIDEO_S_PER_DAY": "1000000",
}


def per_op_us(fn: Callable[[], object], ops: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - started) / ops * 1e6


def in_process(ops: int) -> dict[str, float]:
    from chat import access, limits
    from chat.storage import media_signature_ok, sign_media

    value, _ = access.issue("aria", "voice", 7)
    name = f"sessions/{uuid.uuid4()}/audio/reply-12-0123456789abcdef0123.wav"
    signed = sign_media(name)
    return {
        "ticket issue µs": per_op_us(lambda: access.issue("aria", "voice", 7), ops),
        "ticket check µs": per_op_us(lambda: access.check(value, avatar="aria"), ops),
        "media URL sign µs": per_op_us(lambda: sign_media(name), ops),
        "media URL check µs": per_op_us(
            lambda: media_signature_ok(name, signed["e"], signed["s"]), ops
        ),
        "admit a turn, every limit set µs": per_op_us(
            lambda: limits.admit_turn("ip:bench", audio=True, video=True), ops // 5
        ),
        "open + close a session (limit set) µs": per_op_us(
            lambda: (
                limits.open_session("ip:bench", "s"),
                limits.close_session("ip:bench", "s"),
            ),
            ops // 5,
        ),
    }


async def handshakes(port: int, sessions: int) -> dict[str, list[float]]:
    import httpx
    import websockets

    base = f"127.0.0.1:{port}"
    times: dict[str, list[float]] = {"ticket": [], "plain": [], "with ticket": []}
    async with httpx.AsyncClient(base_url=f"http://{base}") as http:
        for _ in range(sessions):
            started = time.perf_counter()
            ticket = (await http.post("/api/tickets", json={"mode": "voice"})).json()["ticket"]
            times["ticket"].append((time.perf_counter() - started) * 1000)
            for kind, query in (("plain", "?mode=voice"), ("with ticket", f"?ticket={ticket}")):
                started = time.perf_counter()
                async with websockets.connect(f"ws://{base}/ws/chat/{query}") as ws:
                    init = json.loads(await ws.recv())
                    assert init["type"] == "init", init
                    times[kind].append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args()
    stack = Stack(None, prefix="echo-bench-access-", **LIMITS)
    try:
        stack.prepare()
        os.environ.update(LIMITS)
        import logging

        import django

        django.setup()
        logging.getLogger("httpx").setLevel(logging.WARNING)
        for label, value in in_process(args.ops).items():
            print(f"{label:<40} {value:8.1f}")
        _, port = stack.start_web()
        times = asyncio.run(handshakes(port, args.sessions))
        for kind, values in times.items():
            print(
                f"{kind + ' ms':<40} median {statistics.median(values):6.2f}"
                f"  p99 {percentile(values, 0.99):6.2f}"
            )
    finally:
        stack.close()


if __name__ == "__main__":
    main()
