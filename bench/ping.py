"""Ping → pong latency of the session WebSocket under N concurrent sessions.

Starts one web process (`python -m echoproject.web`, i.e. daphne with the service's settings) on
a free loopback port, then a client in a second process that opens N sessions (ramped up), has
each send `ping` once a second for D seconds, and reports p50/p90/p99/max latency and errors of
the steady state (the first seconds after the ramp are not counted).

    .venv/bin/python bench/ping.py --sessions 1000 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import Stack, percentile  # noqa: E402


async def session(
    url: str, seconds: float, warmup_until: float, latencies: list[float], errors: list[str]
) -> None:
    import websockets

    try:
        async with websockets.connect(
            url, max_size=None, open_timeout=30, ping_interval=None
        ) as ws:
            init = json.loads(await ws.recv())
            if init.get("type") != "init":
                errors.append(f"no init: {init}")
                return
            await asyncio.sleep(random.random())  # spread the pings over the second
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sent = time.perf_counter()
                await ws.send(json.dumps({"type": "ping", "timestamp": sent}))
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if event.get("type") == "pong":
                        break
                    if event.get("type") == "error":
                        errors.append(event["code"])
                        break
                if time.monotonic() > warmup_until:
                    latencies.append((time.perf_counter() - sent) * 1000)
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - sent)))
    except Exception as exc:  # every failure is counted, none stops the run
        errors.append(type(exc).__name__)


async def client(url: str, sessions: int, seconds: float, ramp: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    warmup_until = time.monotonic() + ramp + 3
    tasks = []
    for n in range(sessions):
        tasks.append(
            asyncio.create_task(
                session(url, seconds + ramp - n * ramp / sessions, warmup_until, latencies, errors)
            )
        )
        await asyncio.sleep(ramp / sessions)
    await asyncio.gather(*tasks)
    return {
        "sessions": sessions,
        "pings": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "p50_ms": round(statistics.median(latencies), 2) if latencies else float("nan"),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 1) if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--ramp", type=float, default=10, help="seconds to open all sessions")
    parser.add_argument(
        "--url", help="an already running server (ws://host:port); else one is started"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the started server"
    )
    parser.add_argument("--redis-db", type=int, help="default: a free one of 1-15")
    parser.add_argument(
        "--client-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the event loop of this client process (the server's is WEB_LOOP)",
    )
    args = parser.parse_args()
    if args.client_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    stack, server, url = None, None, args.url
    if url is None:
        stack = Stack(args.redis_db, RATE_LIMIT_MESSAGES="100")
        stack.env.update(dict(item.split("=", 1) for item in args.env))
        stack.prepare()
        server, port = stack.start_web()
        url = f"ws://127.0.0.1:{port}"
    try:
        started = time.process_time()
        result = asyncio.run(client(f"{url}/ws/chat/", args.sessions, args.seconds, args.ramp))
        result["client_cpu_s"] = round(time.process_time() - started, 1)
        if server is not None:
            with open(f"/proc/{server.pid}/stat") as stat:
                fields = stat.read().split()
            result["server_cpu_s"] = round(
                (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK"), 1
            )
        print(json.dumps(result))
    finally:
        if stack is not None:
            stack.close()


if __name__ == "__main__":
    main()
