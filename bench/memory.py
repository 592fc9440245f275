"""Memory of the web process over many sessions: RSS after each round of sessions opened and
closed.

Starts one web process (`python -m echoproject.web`, the service's settings plus `--env`) on a
Redis database of its own, then, `--rounds` times: opens `--sessions` sessions at once (each
reads `init` and answers one `ping`), closes them all, waits until the web process has ended
them and has been idle for 3 s (its CPU time stops moving) and prints the process's RSS. A server that keeps what its
closed sessions left behind grows round after round; one that reclaims it stays flat.

    .venv/bin/python bench/memory.py --rounds 5 --sessions 1000 [--env WEB_GC=default]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

from bench.stack import Stack  # noqa: E402
from harness.procs import cpu_s, rss_mb, wait_idle  # noqa: E402


class Counted:
    """Sessions past their handshake (or failed); `all_done` is set when every one is."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        self.all_done = asyncio.Event()

    def add(self) -> None:
        self.n += 1
        if self.n >= self.total:
            self.all_done.set()


async def one_session(
    url: str, gate: asyncio.Semaphore, count: Counted, close: asyncio.Event, errors: list[str]
) -> None:
    """Open a session, read `init`, ping once, then hold it open until the round closes."""
    import websockets

    try:
        await gate.acquire()
        try:
            ws = await websockets.connect(
                url, max_size=None, open_timeout=60, ping_interval=None, close_timeout=30
            )
            init = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if init.get("type") != "init":
                errors.append(f"no init: {init.get('type')}")
                await ws.close()
                return
            await ws.send(json.dumps({"type": "ping", "timestamp": 1}))
            while json.loads(await asyncio.wait_for(ws.recv(), 60)).get("type") != "pong":
                pass
        finally:
            gate.release()
            count.add()
        await close.wait()
        await ws.close()
    except Exception as exc:  # counted, never stops the round
        errors.append(type(exc).__name__)


async def round_of(url: str, sessions: int, parallel: int) -> list[str]:
    """Open `sessions` sessions (at most `parallel` handshakes at a time), then close all."""
    errors: list[str] = []
    count = Counted(sessions)
    close = asyncio.Event()
    gate = asyncio.Semaphore(parallel)
    tasks = [
        asyncio.create_task(one_session(url, gate, count, close, errors)) for _ in range(sessions)
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(count.all_done.wait(), 600)
    close.set()
    await asyncio.gather(*tasks)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=50, help="handshakes at a time")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the started server"
    )
    parser.add_argument("--redis-db", type=int, help="default: a free one of 1-15")
    args = parser.parse_args()
    import resource
    import signal

    # a terminated run still stops its web process (through the `finally` below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    stack = Stack(args.redis_db, prefix="echo-bench-memory-", RATE_LIMIT_MESSAGES="100")
    stack.env.update(dict(item.split("=", 1) for item in args.env))
    try:
        stack.prepare()
        server, port = stack.start_web()
        url = f"ws://127.0.0.1:{port}/ws/chat/"
        wait_idle(server.pid)
        rows = [{"round": 0, "sessions": 0, "rss_mb": round(rss_mb(server.pid), 1)}]
        print(json.dumps(rows[0]), flush=True)
        for number in range(1, args.rounds + 1):
            started = time.monotonic()
            errors = asyncio.run(round_of(url, args.sessions, args.parallel))
            wait_idle(server.pid)
            row = {
                "round": number,
                "sessions": number * args.sessions,
                "rss_mb": round(rss_mb(server.pid), 1),
                "errors": len(errors),
                "error_kinds": sorted(set(errors))[:5],
                "round_s": round(time.monotonic() - started, 1),
                "server_cpu_s": round(cpu_s(server.pid), 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        first = rows[1]["rss_mb"]
        last = rows[-1]["rss_mb"]
        print(
            json.dumps(
                {
                    "env": args.env,
                    "rss_after_first_round_mb": first,
                    "rss_after_last_round_mb": last,
                    "growth_after_first_round_pct": round((last - first) / first * 100, 1),
                    "growth_per_round_mb": round((last - first) / max(1, args.rounds - 1), 1),
                }
            )
        )
    finally:
        stack.close()


if __name__ == "__main__":
    main()
