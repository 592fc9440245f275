"""Ping → pong latency of the session WebSocket under N concurrent sessions.

Starts one web process (`python -m echoproject.web`, i.e. daphne with the service's settings) on
a free loopback port, then a client in a second process that opens N sessions (ramped up), has
each send `ping` once a second for D seconds, and reports p50/p90/p99/max latency and errors of
the steady state (the first seconds after the ramp are not counted).

With `--uploads N` it also starts a speech worker and, after those D seconds of pings alone,
runs N upload turns in a row from one more session (a ~6 s 16 kHz WAV sent as one binary
frame, as the web client's "Hold to talk" does; each turn waits for its `tts_complete`) while
the pings go on, and prints that phase's figures and the ratio of the two p99s: whether
uploads stall the web process's event loop.

    .venv/bin/python bench/ping.py --sessions 1000 --seconds 30 [--uploads 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import threading
import time
from typing import Any

from bench.stack import Stack, percentile  # noqa: E402

# about 6 s of espeak-ng speech, a typical held-to-talk utterance
UPLOAD_TEXT = (
    "good morning, could you tell me what the weather will be like in london this afternoon "
    "and whether I should take an umbrella with me"
)


async def session(
    url: str, stop: asyncio.Event, samples: list[tuple[float, float]], errors: list[str]
) -> None:
    """One session pinging once a second until `stop`; (send time, latency ms) per pong."""
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
            while not stop.is_set():
                sent = time.perf_counter()
                await ws.send(json.dumps({"type": "ping", "timestamp": sent}))
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if event.get("type") == "pong":
                        break
                    if event.get("type") == "error":
                        errors.append(event["code"])
                        break
                samples.append((time.monotonic(), (time.perf_counter() - sent) * 1000))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), max(0.0, 1.0 - (time.perf_counter() - sent))
                    )
    except Exception as exc:  # every failure is counted, none stops the run
        errors.append(type(exc).__name__)


def probe(pid: int | None) -> tuple[float, float, float, float]:
    """(wall clock, CPU seconds of the server, seconds its main thread (the event loop) was
    ready to run but waited for a core, the same for this client's thread): the waits say
    whether the machine starved the server or the measuring client."""

    def waited(path: str) -> float:
        with open(path) as sched:
            return int(sched.read().split()[1]) / 1e9

    client_wait = waited(f"/proc/self/task/{threading.get_native_id()}/schedstat")
    if pid is None:
        return time.monotonic(), 0.0, 0.0, client_wait
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return time.monotonic(), cpu, waited(f"/proc/{pid}/task/{pid}/schedstat"), client_wait


def shares(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
    wall = after[0] - before[0]
    return {
        "server_cpu_share": round((after[1] - before[1]) / wall, 2),
        "server_loop_runqueue_wait_share": round((after[2] - before[2]) / wall, 3),
        "client_loop_runqueue_wait_share": round((after[3] - before[3]) / wall, 3),
    }


def figures(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """Latency figures of the pings sent between `start` and `end` (monotonic)."""
    latencies = [ms for sent, ms in samples if start <= sent < end]
    return {
        "pings": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else float("nan"),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 1) if latencies else float("nan"),
    }


async def upload_turns(url: str, turns: int, audio: bytes, errors: list[str]) -> list[float]:
    """`turns` upload turns in a row on one session, as the web client sends them (the whole
    WAV as one binary frame); each waits for its `tts_complete`. Milliseconds per turn."""
    import websockets

    times: list[float] = []
    async with websockets.connect(f"{url}?mode=voice", max_size=None, open_timeout=30) as ws:
        json.loads(await ws.recv())
        for _ in range(turns):
            started = time.perf_counter()
            await ws.send(audio)
            while True:
                frame = await asyncio.wait_for(ws.recv(), 120)
                if isinstance(frame, bytes):
                    continue
                event = json.loads(frame)
                if event["type"] == "error":
                    errors.append(f"upload: {event['code']}")
                    break
                if event["type"] == "tts_complete":
                    times.append((time.perf_counter() - started) * 1000)
                    break
    return times


async def poll_healthz(
    http: str, stop: asyncio.Event, polls: list[tuple[float, float, int, list[str]]]
) -> None:
    """GET /healthz every half second until `stop`: (send time, ms, HTTP status, the checks
    that failed) each."""
    host, port = http.removeprefix("http://").split(":")
    while not stop.is_set():
        sent = time.monotonic()
        failed: list[str] = []
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            response = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            head, _, body = response.partition(b"\r\n\r\n")
            status = int(head.split()[1])
            checks = json.loads(body)["checks"]
            failed = [name for name, check in checks.items() if not check["ok"]]
        except (OSError, TimeoutError, IndexError, ValueError, KeyError):
            status = 0
        polls.append((sent, (time.monotonic() - sent) * 1000, status, failed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def health_figures(
    polls: list[tuple[float, float, int, list[str]]], start: float, end: float
) -> dict[str, Any]:
    inside = [poll for poll in polls if start <= poll[0] < end]
    took = [poll[1] for poll in inside]
    return {
        "healthz_polls": len(took),
        "healthz_p50_ms": round(statistics.median(took), 1) if took else None,
        "healthz_max_ms": round(max(took), 1) if took else None,
        "healthz_not_200": sum(1 for poll in inside if poll[2] != 200),
        "healthz_failed_checks": sorted({name for poll in inside for name in poll[3]}),
    }


async def client(
    url: str,
    sessions: int,
    seconds: float,
    ramp: float,
    uploads: int,
    audio: bytes,
    server_pid: int | None,
    healthz: bool = False,
) -> dict[str, Any]:
    """Open the sessions over `ramp` seconds, measure `seconds` of pings alone, then (with
    `uploads`) the pings while upload turns run one after another."""
    samples: list[tuple[float, float]] = []
    errors: list[str] = []
    stop = asyncio.Event()
    tasks = []
    for _ in range(sessions):
        tasks.append(asyncio.create_task(session(url, stop, samples, errors)))
        await asyncio.sleep(ramp / sessions)
    polls: list[tuple[float, float, int, list[str]]] = []
    if healthz:
        http = url.replace("ws://", "http://").removesuffix("/ws/chat/")
        tasks.append(asyncio.create_task(poll_healthz(http, stop, polls)))
    await asyncio.sleep(3)  # the ramp's last sessions settle; not counted
    quiet_start = time.monotonic()
    at_start = probe(server_pid)
    await asyncio.sleep(seconds)
    quiet_end = time.monotonic()
    at_end = probe(server_pid)
    result: dict[str, Any] = {"sessions": sessions, **figures(samples, quiet_start, quiet_end)}
    result["window_monotonic"] = [round(quiet_start, 1), round(quiet_end, 1)]
    result.update(shares(at_start, at_end))
    if healthz:
        result.update(health_figures(polls, quiet_start, quiet_end))
    if uploads:
        turn_ms = await upload_turns(url, uploads, audio, errors)
        uploads_end = time.monotonic()
        busy = figures(samples, quiet_end, uploads_end)
        result["with_uploads"] = {
            **busy,
            **shares(at_end, probe(server_pid)),
            **(health_figures(polls, quiet_end, uploads_end) if healthz else {}),
            "turns": len(turn_ms),
            "turn_median_ms": round(statistics.median(turn_ms)) if turn_ms else None,
            "seconds": round(uploads_end - quiet_end, 1),
        }
        result["p99_ratio"] = round(busy["p99_ms"] / result["p99_ms"], 2)
    stop.set()
    await asyncio.gather(*tasks)
    result["errors"] = len(errors)
    result["error_kinds"] = sorted(set(errors))[:5]
    return result


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
        "--healthz",
        action="store_true",
        help="also GET /healthz every 0.5 s: its time and non-200 answers per phase",
    )
    parser.add_argument(
        "--uploads",
        type=int,
        default=0,
        help="after the pings alone, N upload turns in a row (a speech worker is started) "
        "while the pings go on; prints both phases' figures and the ratio of their p99",
    )
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
    import signal

    # a terminated run still stops its web process and worker (through the `finally` below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    stack, server, url = None, None, args.url
    if url is None:
        stack = Stack(args.redis_db, RATE_LIMIT_MESSAGES="100")
        stack.env.update(dict(item.split("=", 1) for item in args.env))
        stack.prepare()
        server, port = stack.start_web()
        url = f"ws://127.0.0.1:{port}"
    audio = b""
    try:
        if args.uploads:
            from tests.audio import speak

            audio = speak(UPLOAD_TEXT, sample_rate=16000).read_bytes()  # the web client's WAV
        if (args.uploads or args.healthz) and stack is not None:
            # on both queues, so that /healthz has every worker it asks for
            stack.start_worker("speech,render", "bench-ping")
        started = time.process_time()
        if args.uploads:  # warm-up turn: the worker loads its models
            asyncio.run(upload_turns(f"{url}/ws/chat/", 1, audio, []))
        result = asyncio.run(
            client(
                f"{url}/ws/chat/",
                args.sessions,
                args.seconds,
                args.ramp,
                args.uploads,
                audio,
                server.pid if server is not None else None,
                args.healthz,
            )
        )
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
