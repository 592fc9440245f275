"""Redis faults and a killed web process with sessions open: what survives, how fast it recovers.

Starts a redis-server of its own (free port, temporary directory, no persistence), a web
process and a speech + render worker on it, opens N sessions and then, one after the other:
kills every Redis client connection (`CLIENT KILL TYPE normal`), pauses Redis for 5 s
(SIGSTOP/SIGCONT) and restarts it. After each fault it reports how many sessions were closed
(and with which codes), how long until every session answered a ping, and, after the restart,
until every session's event group was joined again and an upload turn (through the worker)
completed; the same turn before the faults is the reference. Then it SIGKILLs a second web
process holding M sessions with files and reports when its presence expired and what one
cleanup run did.

    .venv/bin/python bench/faults.py --sessions 50 --orphans 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stack import Stack  # noqa: E402
from harness.procs import RedisServer  # noqa: E402

UTTERANCE = "what is the weather like in london today"


class Session:
    """One WebSocket session; a reader task queues its events and notes its close code."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: int | None = None
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        import websockets

        try:
            async for frame in self.ws:
                if isinstance(frame, str):
                    await self.events.put(json.loads(frame))
        except websockets.ConnectionClosed:
            pass
        self.closed = self.ws.close_code

    async def until(self, kind: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = await asyncio.wait_for(
                self.events.get(), max(0.01, deadline - time.monotonic())
            )
            if event["type"] == kind:
                return event
            if event["type"] == "error":
                raise RuntimeError(f"error while waiting for {kind}: {event}")


async def open_sessions(url: str, count: int) -> list[Session]:
    import websockets

    sessions = []
    for _ in range(count):
        session = Session(await websockets.connect(url, max_size=None, ping_interval=None))
        session.init = await session.until("init")  # type: ignore[attr-defined]
        sessions.append(session)
    return sessions


async def all_answer(sessions: list[Session], stamp: int) -> float:
    """Seconds until every open session answered a ping."""
    started = time.monotonic()
    live = [s for s in sessions if s.closed is None]
    for session in live:
        await session.ws.send(json.dumps({"type": "ping", "timestamp": stamp}))
    for session in live:
        await session.until("pong", timeout=60)
    return time.monotonic() - started


async def upload_turn(session: Session, audio: bytes) -> float:
    started = time.monotonic()
    await session.ws.send(audio)
    await session.until("tts_complete", timeout=120)
    return time.monotonic() - started


def report(name: str, sessions: list[Session], answered_s: float, **figures: float) -> None:
    closed = [s.closed for s in sessions if s.closed is not None]
    extra = "".join(f", {k} {v:.2f} s" for k, v in figures.items())
    print(
        f"{name:<28} sessions closed {len(closed)}/{len(sessions)} {sorted(set(closed)) or ''}"
        f", every session answered a ping {answered_s:.2f} s after{extra}"
    )


async def redis_faults(stack: Stack, server: RedisServer, url: str, count: int) -> None:
    from tests.audio import speak

    audio = speak(UTTERANCE).read_bytes()
    sessions = await open_sessions(url, count)
    reference = await upload_turn(sessions[0], audio)
    print(f"{count} sessions open; an upload turn before any fault took {reference:.2f} s")

    server.client().client_kill_filter(_type="normal", skipme=True)
    report("CLIENT KILL TYPE normal", sessions, await all_answer(sessions, 1))

    server.proc.signal(signal.SIGSTOP)
    paused = time.monotonic()
    await asyncio.sleep(1)
    during = await all_answer(sessions, 20)  # the session's own path needs no Redis
    await asyncio.sleep(max(0.0, 5 - (time.monotonic() - paused)))
    server.proc.signal(signal.SIGCONT)
    report(
        "5 s SIGSTOP of redis-server",
        sessions,
        await all_answer(sessions, 2),
        **{"while paused every session answered a ping in": during},
    )

    groups = [f"asgi:group:session.{s.init['session_id']}" for s in sessions]  # type: ignore[attr-defined]
    await asyncio.to_thread(server.restart)
    back = time.monotonic()
    answered = await all_answer(sessions, 3)
    client = server.client()
    while not all(client.zcard(g) == 1 for g in groups):
        if time.monotonic() - back > 60:
            raise RuntimeError("the groups were not joined again within 60 s")
        await asyncio.sleep(0.05)
    rejoined = time.monotonic() - back
    turn = await upload_turn(sessions[1], audio)
    report(
        "restart of redis-server",
        sessions,
        answered,
        **{"groups joined again after": rejoined, "then an upload turn took": turn},
    )
    for session in sessions:
        await session.ws.close()


async def killed_web(stack: Stack, count: int) -> None:
    """A second web process with `count` sessions holding speech files, SIGKILLed."""
    import django

    django.setup()
    from chat import presence, sessions
    from chat.models import ChatSession

    web, port = stack.start_web()
    url = f"ws://127.0.0.1:{port}/ws/chat/?mode=voice"
    held = await open_sessions(url, count)
    for session in held:
        await session.ws.send(json.dumps({"type": "text_message", "text": "Hello there."}))
    for session in held:
        await session.until("tts_complete", timeout=120)
    ids = [s.init["session_id"] for s in held]  # type: ignore[attr-defined]
    process = await asyncio.to_thread(lambda: ChatSession.objects.get(pk=ids[0]).web_process)
    media = Path(stack.env["MEDIA_ROOT"]) / "sessions"
    files = sum(1 for i in ids for p in (media / i).rglob("*") if p.is_file())

    def killed_until_expired() -> float:
        web.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        web.wait(10)
        while presence.alive([process]) != set():
            time.sleep(0.1)
        return time.monotonic() - killed

    expired = await asyncio.to_thread(killed_until_expired)
    started = time.monotonic()
    result = await asyncio.to_thread(sessions.cleanup)
    took = time.monotonic() - started
    left = sum(1 for i in ids for p in (media / i).rglob("*") if p.is_file())
    print(
        f"killed web process with {count} sessions ({files} files): presence expired"
        f" {expired:.1f} s after SIGKILL (WEB_PRESENCE_TTL_S {stack.env.get('WEB_PRESENCE_TTL_S', 30)});"
        f" one cleanup ended {result['orphaned']} sessions in {took:.2f} s, files left {left}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--orphans", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="echo-bench-faults-"))
    server = RedisServer(work, work)
    stack = Stack(redis_db=0, REDIS_URL=server.url, RENDER_HEARTBEAT_S="1")
    try:
        stack.prepare()
        stack.start_worker("speech,render", "faults")
        _, port = stack.start_web()
        url = f"ws://127.0.0.1:{port}/ws/chat/?mode=voice"
        asyncio.run(redis_faults(stack, server, url, args.sessions))
        asyncio.run(killed_web(stack, args.orphans))
    finally:
        stack.close()
        server.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(f"machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
