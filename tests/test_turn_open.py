"""How a session's turn opens its reply (chat.turns.SessionTurns.answer): the user's message is
stored and announced, the reply's message made and the history read, and a reply still running
is superseded, with the LLM asked once, with the right conversation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db.backends.utils import CursorWrapper

from avatars.models import Avatar
from chat import sessions
from chat.models import Message
from chat.providers.cloud import run_once
from chat.turns import SessionTurns
from tests.fakes.dashscope_server import DashScopeServer
from tests.fixtures_realtime import wait_until

pytestmark = pytest.mark.usefixtures("live_avatars")


class Recorder:
    """The connection of a session, as the turns see it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def send_bytes(self, data: bytes) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def _open(mode: str = "voice") -> tuple[SessionTurns, Recorder]:
    avatar = await Avatar.objects.aget(slug="aria")
    session = await database_sync_to_async(sessions.open_session)(avatar, mode, "en-US", {})
    transport = Recorder()
    return SessionTurns(transport, session, avatar, "en-US", "test-subject"), transport


def _llm_messages(dashscope: DashScopeServer) -> list[list[dict[str, str]]]:
    return [r.payload["input"]["messages"] for r in dashscope.of("llm")]


def test_an_utterance_is_stored_announced_and_answered(dashscope: DashScopeServer) -> None:
    async def body() -> tuple[SessionTurns, Recorder]:
        turns, transport = await _open()
        await turns.user_utterance("Where should I go in May?", "u1")
        assert turns.reply_task is not None
        await asyncio.wait_for(turns.reply_task, 10)
        return turns, transport

    turns, transport = run_once(asyncio.wait_for(body(), 30))
    kinds = [e["type"] for e in transport.events]
    assert kinds[0] == "asr_result" and "text_response" in kinds
    [result], [response] = transport.of("asr_result"), transport.of("text_response")
    user = Message.objects.get(pk=result["message_id"])
    assert user.role == "user" and user.text == "Where should I go in May?"
    assert result["utterance_id"] == "u1"
    reply = Message.objects.get(pk=response["message_id"])
    assert reply.reply_to_id == user.id and reply.text == response["text"] and reply.text
    [messages] = _llm_messages(dashscope)
    assert messages[-1] == {"role": "user", "content": "Where should I go in May?"}
    assert all(m["content"] for m in messages)  # not the reply's own, still empty message


def test_an_utterance_supersedes_a_reply_still_streaming(dashscope: DashScopeServer) -> None:
    dashscope.behaviour.token_delay = 0.1  # the first reply is still streaming when cut

    async def body() -> Recorder:
        turns, transport = await _open()
        await turns.text("My name is Ada.", "t1")
        await wait_until(lambda: bool(transport.of("text_delta")), 10, "the first reply")
        first = turns.reply_task
        await turns.user_utterance("Do you remember me?", "u2")
        assert first is not None and first.done()  # superseded before the new one started
        assert turns.reply_task is not None and turns.reply_task is not first
        dashscope.behaviour.token_delay = 0.0
        await asyncio.wait_for(turns.reply_task, 10)
        return transport

    transport = run_once(asyncio.wait_for(body(), 30))
    kinds = [e["type"] for e in transport.events]
    cut, done = transport.of("text_response")
    assert cut.get("interrupted") is True and not done.get("interrupted")
    [result] = transport.of("asr_result")
    # the utterance is announced first, then the old reply ends, then the new one answers
    assert kinds.index("asr_result") < transport.events.index(cut) < transport.events.index(done)
    assert done["reply_to"] == result["message_id"] != cut["reply_to"]
    assert Message.objects.get(pk=cut["message_id"]).error_code == "INTERRUPTED"
    first, second = _llm_messages(dashscope)
    assert first[-1] == {"role": "user", "content": "My name is Ada."}
    assert second[-2:] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "user", "content": "Do you remember me?"},
    ]


@pytest.mark.parametrize("mode", ["voice", "video"])
def test_a_turn_stores_its_two_messages_in_one_transaction(
    dashscope: DashScopeServer, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The user's message and the reply's are written together (one commit, never the one
    without the other), and only a video session, whose replies render, looks for renders to
    stop."""
    statements: list[tuple[str, bool]] = []
    execute = CursorWrapper.execute

    def recorded(cursor: CursorWrapper, sql: str, params: Any = None) -> Any:
        statements.append((sql, cursor.db.in_atomic_block))
        return execute(cursor, sql, params)

    async def body() -> None:
        turns, _ = await _open(mode)
        monkeypatch.setattr(CursorWrapper, "execute", recorded)
        await turns.user_utterance("Where should I go in May?", "u1")
        monkeypatch.setattr(CursorWrapper, "execute", execute)  # the reply's own calls follow
        assert turns.reply_task is not None
        await asyncio.wait_for(turns.reply_task, 10)

    run_once(asyncio.wait_for(body(), 30))
    inserts = [atomic for sql, atomic in statements if sql.startswith('INSERT INTO "chat_message"')]
    assert inserts == [True, True]
    looked_for_renders = any("render_task_id" in sql.partition("WHERE")[2] for sql, _ in statements)
    assert looked_for_renders == (mode == "video")


def test_a_reply_whose_session_is_erased_while_it_runs_ends_quietly(
    dashscope: DashScopeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The session's messages are deleted (its data erased) while the reply streams: the reply
    still ends and tells the client, does not bring its message back, and logs no error."""
    dashscope.behaviour.token_delay = 0.05

    async def body() -> tuple[Recorder, int]:
        turns, transport = await _open()
        await turns.text("Tell me a long story.", "t1")
        await wait_until(lambda: bool(transport.of("text_delta")), 10, "the reply")
        await Message.objects.filter(session_id=turns.session_id).adelete()
        assert turns.reply_task is not None
        await asyncio.wait_for(turns.reply_task, 10)
        return transport, turns.session_id

    caplog.set_level("INFO")
    transport, session_id = run_once(asyncio.wait_for(body(), 30))
    assert transport.of("text_response")
    assert not Message.objects.filter(session_id=session_id).exists()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert any("deleted meanwhile" in r.getMessage() for r in caplog.records)
