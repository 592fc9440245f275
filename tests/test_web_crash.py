"""A web process killed outright (SIGKILL) runs no disconnect handler; its sessions must not
linger until the idle timeout. Each web process announces itself in Redis; the next cleanup
after its announcement expired ends its sessions (reason `server_lost`) and deletes their
files, and leaves the sessions of a live web process alone."""

from __future__ import annotations

import asyncio
import signal
import time
from io import StringIO
from pathlib import Path

import pytest
import websockets
from django.core.management import call_command

from chat import presence
from chat.models import ChatSession
from tests.fixtures_sessions import Client, daphne_with, run

pytestmark = pytest.mark.usefixtures("live_avatars")

TTL = "2"  # WEB_PRESENCE_TTL_S of the web processes started here


def files_of(media_root: Path, session_id: str) -> list[Path]:
    return [p for p in (media_root / "sessions" / session_id).rglob("*") if p.is_file()]


async def session_with_speech(url: str) -> Client:
    """A voice session after one text turn: its reply's speech is a file of the session."""
    client = Client(await websockets.connect(url, max_size=None))
    client.init = await client.until("init", fail_on_error=True)
    await client.send(type="text_message", text="Tell me about the weather.")
    await client.until("tts_complete", timeout=60, fail_on_error=True)
    return client


def test_sessions_of_a_killed_web_process_end_at_the_next_cleanup(
    log_dir: Path, media_root: Path
) -> None:
    doomed, doomed_port = daphne_with(log_dir, "daphne-doomed", WEB_PRESENCE_TTL_S=TTL)
    survivor, survivor_port = daphne_with(log_dir, "daphne-survivor", WEB_PRESENCE_TTL_S=TTL)
    try:

        async def open_both() -> tuple[list[Client], Client]:
            url = f"ws://127.0.0.1:{doomed_port}/ws/chat/?mode=voice"
            clients = [await session_with_speech(url) for _ in range(3)]
            other = await session_with_speech(f"ws://127.0.0.1:{survivor_port}/ws/chat/?mode=voice")
            return clients, other

        def processes(ids: list[str]) -> set[str]:
            return set(ChatSession.objects.filter(pk__in=ids).values_list("web_process", flat=True))

        def still_open(session_id: str) -> bool:
            session = ChatSession.objects.get(pk=session_id)
            return session.ended_at is None and bool(files_of(media_root, session_id))

        async def body() -> tuple[list[str], bool, dict]:
            clients, other = await open_both()
            ids = [c.init["session_id"] for c in clients]
            (killed,) = await asyncio.to_thread(processes, ids)
            assert killed and await asyncio.to_thread(processes, [other.init["session_id"]]) != {
                killed
            }
            doomed.signal(signal.SIGKILL)
            await asyncio.to_thread(doomed.popen.wait, 10)
            deadline = time.monotonic() + 30
            while presence.alive([killed]) != set():  # its announcement expires
                assert time.monotonic() < deadline, "the killed process is still announced"
                await asyncio.sleep(0.2)
            out = StringIO()
            await asyncio.to_thread(call_command, "cleanup_sessions", stdout=out)
            other_open = await asyncio.to_thread(still_open, other.init["session_id"])
            await other.send(type="ping", timestamp=7)  # the live process's session goes on
            pong = await other.until("pong")
            await other.ws.close()
            return ids, other_open, {"out": out.getvalue(), "pong": pong}

        ids, other_open, result = run(body(), timeout=180)
    finally:
        doomed.stop()
        survivor.stop()

    assert "and 3 of dead web processes" in result["out"]
    for session_id in ids:
        session = ChatSession.objects.get(pk=session_id)
        assert session.ended_at is not None and session.end_reason == "server_lost"
        assert session.files_deleted >= 1 and files_of(media_root, session_id) == []
    assert other_open and result["pong"]["timestamp"] == 7


def test_a_recently_restarted_redis_proves_no_process_dead(settings) -> None:
    """Right after a restart Redis holds no announcement at all; the cleanup must wait one
    TTL before it believes an absent one. The test's Redis has been up far longer than this
    TTL, a TTL longer than its uptime makes it 'recently restarted'."""
    import redis

    uptime = redis.Redis.from_url(settings.REDIS_URL).info("server")["uptime_in_seconds"]
    settings.WEB_PRESENCE_TTL_S = uptime + 3600
    assert presence.alive(["nobody:1:00000000"]) is None
    settings.WEB_PRESENCE_TTL_S = 1
    assert presence.alive(["nobody:1:00000000"]) == set()
