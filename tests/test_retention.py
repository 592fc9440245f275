"""Retention from the outside: history deleted when a session ends (SESSION_RETENTION=end) or
kept (the default), and a person's data exported and erased by `manage.py user_data`."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.core.management import CommandError, call_command

from chat.models import ChatSession, Message
from harness.procs import wait_for
from tests.fixtures_sessions import Client, daphne_with, run
from tests.test_access import login

pytestmark = pytest.mark.usefixtures("live_avatars")


@pytest.fixture(scope="module")
def forgetful(django_db_setup: None, log_dir: Path) -> Iterator[str]:
    proc, port = daphne_with(log_dir, "daphne-retention-end", SESSION_RETENTION="end")
    yield f"ws://127.0.0.1:{port}/ws/chat/"
    proc.stop()


def session_files(media_root: Path, session_id: str) -> list[Path]:
    return [p for p in (media_root / "sessions" / session_id).rglob("*") if p.is_file()]


async def one_turn(url: str, *, stop: bool) -> tuple[dict[str, Any], bool]:
    """A session with one text turn, then stopped (or dropped); its init and whether the
    reply's audio was stored before it ended."""
    async with websockets.connect(url) as ws:
        client = Client(ws)
        init = await client.recv()
        await client.send(type="text_message", text="hello, who are you?")
        await client.until("tts_complete", fail_on_error=True)
        # the reply's row gets its audio's name as the reply is saved, just after tts_complete
        files = await asyncio.to_thread(
            lambda: wait_for(
                lambda: (
                    Message.objects.filter(session_id=init["session_id"]).exclude(audio="").exists()
                )
            )
        )
        if stop:
            await client.send(type="stop_session")
            await client.until("session_ended")
    return init, files


@pytest.mark.parametrize("stop", [True, False], ids=["stopped", "dropped"])
def test_history_is_deleted_when_the_session_ends(
    forgetful: str, media_root: Path, stop: bool
) -> None:
    init, files = run(one_turn(forgetful + "?mode=voice", stop=stop))
    session_id = init["session_id"]
    assert files, "the reply's audio was stored before the session ended"
    assert wait_for(lambda: not ChatSession.objects.filter(pk=session_id).exists())
    assert not Message.objects.filter(session_id=session_id).exists()
    assert session_files(media_root, session_id) == []


def test_history_is_kept_by_default(connect: Callable[..., Any], chat_server: str) -> None:
    init, _ = run(one_turn(f"{chat_server}/ws/chat/?mode=voice", stop=True))
    session = ChatSession.objects.get(pk=init["session_id"])
    assert session.is_ended and session.messages.count() == 2


def export(*selector: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("user_data", "export", *selector, stdout=out)
    return json.loads(out.getvalue())


def test_a_users_data_is_exported_and_erased(chat_server: str, media_root: Path) -> None:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("grace", password="hopper-1906")
    browser = login(chat_server.replace("ws://", "http://"), "grace", "hopper-1906")
    tickets = [browser.post("/api/tickets", json={}).json()["ticket"] for _ in range(2)]
    browser.close()
    url = f"{chat_server}/ws/chat/?ticket="
    finished, _ = run(one_turn(url + tickets[0], stop=True))
    anonymous, _ = run(one_turn(f"{chat_server}/ws/chat/?mode=voice", stop=True))

    async def with_open_session() -> tuple[dict[str, Any], dict[str, Any], str]:
        async with websockets.connect(url + tickets[1]) as ws:
            client = Client(ws)
            init = await client.recv()
            await client.send(type="text_message", text="remember my secret plan")
            await client.until("tts_complete", fail_on_error=True)
            exported = await asyncio.to_thread(export, "--user", str(user.pk))
            out = io.StringIO()
            await asyncio.to_thread(
                call_command, "user_data", "erase", "--user", str(user.pk), stdout=out
            )
            return init, exported, out.getvalue()

    still_open, exported, erased = run(with_open_session())
    ids = {s["id"] for s in exported["sessions"]}
    assert ids == {finished["session_id"], still_open["session_id"]}
    texts = [m["text"] for s in exported["sessions"] for m in s["messages"]]
    assert "remember my secret plan" in texts and "hello, who are you?" in texts
    assert exported["subject"] == f"user:{user.pk}"
    [live] = [s for s in exported["sessions"] if s["id"] == still_open["session_id"]]
    assert live["ended_at"] is None and any(f.endswith(".wav") for f in live["files"])
    assert erased.startswith("erased 2 session(s), 4 message(s), 1 file(s)")
    assert not ChatSession.objects.filter(user=user).exists()
    assert session_files(media_root, still_open["session_id"]) == []
    assert export("--user", str(user.pk))["sessions"] == []
    # the anonymous session of the same address is not theirs: kept
    assert ChatSession.objects.filter(pk=anonymous["session_id"]).exists()


def test_a_client_addresses_data_and_one_session_are_exported_and_erased(
    chat_server: str,
) -> None:
    first, _ = run(one_turn(f"{chat_server}/ws/chat/?mode=voice", stop=True))
    second, _ = run(one_turn(f"{chat_server}/ws/chat/?mode=voice", stop=True))
    by_address = export("--client", "127.0.0.1")
    assert {first["session_id"], second["session_id"]} <= {s["id"] for s in by_address["sessions"]}
    assert by_address["subject"] == "ip:127.0.0.1"
    call_command("user_data", "erase", "--session", first["session_id"], stdout=io.StringIO())
    assert not ChatSession.objects.filter(pk=first["session_id"]).exists()
    assert ChatSession.objects.filter(pk=second["session_id"]).exists()
    with pytest.raises(CommandError, match="--session must be a session id"):
        call_command("user_data", "export", "--session", "nope", stdout=io.StringIO())
