"""The web process does not keep what closed sessions leave behind (WEB_GC=tuned, the default).

bench/memory.py measures it at scale (5 rounds of 1000 sessions); this is the same check,
smaller: rounds of sessions opened and closed against a real daphne, the process's RSS after
each once it has gone idle.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets

from tests.fixtures_sessions import run
from tests.procs import child_env, rss_mb, start_daphne, wait_idle

SESSIONS = 300
ROUNDS = 4


async def open_and_close(url: str, sessions: int) -> int:
    """Open `sessions` sessions (each reads init), then close them all; how many opened."""
    gate = asyncio.Semaphore(25)
    opened: list[websockets.ClientConnection] = []

    async def one() -> None:
        async with gate:
            ws = await websockets.connect(url, open_timeout=60)
            if json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "init":
                opened.append(ws)
            else:
                await ws.close()

    await asyncio.gather(*(one() for _ in range(sessions)))
    await asyncio.gather(*(ws.close() for ws in opened))
    return len(opened)


@pytest.mark.django_db(transaction=True)
def test_closed_sessions_leave_no_growth_behind(live_avatars: list, log_dir: Path) -> None:
    proc, port = start_daphne(log_dir, child_env(), name="daphne-memory")
    try:
        url = f"ws://127.0.0.1:{port}/ws/chat/"
        pid = proc.popen.pid
        sizes = []
        for _ in range(ROUNDS):
            assert run(open_and_close(url, SESSIONS), timeout=240) == SESSIONS
            wait_idle(pid)
            sizes.append(rss_mb(pid))
    finally:
        proc.stop()
    # the first round sets the heap's size; later rounds reuse it instead of adding to it
    # (before the fix each round of 300 added ~6 MB to ~100 MB)
    assert sizes[-1] <= sizes[0] * 1.10, sizes
