"""How a session's turn opens its reply (chat.turns.SessionTurns.answer): the user's message is
stored and announced, the reply's message made and the history read, and a reply still running
is superseded, with the LLM asked once, with the right conversation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db.backends.utils import CursorWrapper

from avatars.models import Avatar
from chat import sessions
from chat.models import Message
from chat.providers.cloud import run_once
from chat.turns import SessionTurns
from tests.exported import this_process
from tests.fakes.dashscope_server import DashScopeServer, Fault
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


def _asked_again() -> float:
    """echo_llm_asked_again_total as this process exports it."""
    return this_process("echo_llm_asked_again_total")


def _said(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation in an LLM request, without the persona's system message."""
    return [m for m in messages if m["role"] != "system"]


def _slow_user_messages(monkeypatch: pytest.MonkeyPatch, stored: list[float]) -> None:
    """Each user message takes 0.3 s more to store (a busy database); `stored` gets the time
    each is done."""
    add_message = sessions.add_message

    def slow(session_id: Any, role: str, text: str = "", **fields: Any) -> Message:
        message = add_message(session_id, role, text, **fields)
        if role == sessions.USER:
            time.sleep(0.3)
            stored.append(time.monotonic())
        return message

    monkeypatch.setattr(sessions, "add_message", slow)


def test_a_turn_asks_the_llm_while_its_messages_are_stored(
    dashscope: DashScopeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database call is off the path to the reply: the LLM's request is out before the
    user's message is stored, on the first turn of a session and on the next, and what the
    client sees is unchanged (announced first, one answer, the whole conversation asked)."""
    stored: list[float] = []
    _slow_user_messages(monkeypatch, stored)

    async def body() -> Recorder:
        turns, transport = await _open()
        for said, utterance in (("My name is Ada.", "u1"), ("Do you remember me?", "u2")):
            await turns.user_utterance(said, utterance)
            assert turns.reply_task is not None
            await asyncio.wait_for(turns.reply_task, 10)
        return transport

    transport = run_once(asyncio.wait_for(body(), 30))
    asked = [r.opened_at for r in dashscope.of("llm")]
    assert len(asked) == len(stored) == 2  # each turn asked once
    assert asked[0] < stored[0] and asked[1] < stored[1]
    kinds = [e["type"] for e in transport.events]
    assert kinds.index("asr_result") < kinds.index("text_delta")
    first_result, second_result = transport.of("asr_result")
    assert kinds.index("text_response") < transport.events.index(second_result)
    first, second = (_said(messages) for messages in _llm_messages(dashscope))
    assert first == [{"role": "user", "content": "My name is Ada."}] == second[:1]
    assert second[1]["role"] == "assistant" and second[1]["content"].startswith("You said: My")
    assert second[2:] == [{"role": "user", "content": "Do you remember me?"}]
    replies = transport.of("text_response")
    assert [r["reply_to"] for r in replies] == [
        first_result["message_id"],
        second_result["message_id"],
    ]


def test_a_conversation_changed_elsewhere_is_asked_again(dashscope: DashScopeServer) -> None:
    """Someone else wrote to the session between two turns (here: straight into the database):
    the LLM asked early with what the session knew is abandoned, and the reply is the answer to
    the conversation as stored."""

    def answer(messages: list[dict[str, str]]) -> str:
        return "In Oslo." if any("Oslo" in m["content"] for m in messages) else "I do not know."

    dashscope.behaviour.reply = answer
    dashscope.behaviour.first_token_delay = 0.3  # the early answer has not begun when dropped

    async def body() -> tuple[Recorder, str]:
        turns, transport = await _open()
        await turns.text("Hello.", "t1")
        assert turns.reply_task is not None
        await asyncio.wait_for(turns.reply_task, 10)
        await database_sync_to_async(sessions.add_message)(
            turns.session_id, sessions.USER, "I live in Oslo."
        )
        await turns.text("Where do I live?", "t2")
        assert turns.reply_task is not None
        await asyncio.wait_for(turns.reply_task, 10)
        return transport, turns.session_id

    before = _asked_again()
    transport, session_id = run_once(asyncio.wait_for(body(), 30))
    assert _asked_again() == before + 1  # operators see what was paid for twice
    _, early, again = _llm_messages(dashscope)
    assert not any("Oslo" in m["content"] for m in early)
    assert {"role": "user", "content": "I live in Oslo."} in again
    _, response = transport.of("text_response")
    assert response["text"] == "In Oslo."
    deltas = "".join(e["delta"] for e in transport.of("text_delta") if e["ref"] == "t2")
    assert deltas == "In Oslo."  # nothing of the abandoned answer reached the client
    assert Message.objects.get(pk=response["message_id"]).text == "In Oslo."


def test_after_an_interrupted_reply_the_next_turn_is_asked_once(
    dashscope: DashScopeServer,
) -> None:
    """An interrupted reply is not part of the conversation the next turn reads; the session
    knows that, so the next turn's early answer is kept (one request per turn)."""
    dashscope.behaviour.token_delay = 0.1

    async def body() -> Recorder:
        turns, transport = await _open()
        await turns.text("Tell me a long story.", "t1")
        await wait_until(lambda: bool(transport.of("text_delta")), 10, "the first reply")
        assert await turns.interrupt()
        dashscope.behaviour.token_delay = 0.0
        await turns.text("Never mind.", "t2")
        assert turns.reply_task is not None
        await asyncio.wait_for(turns.reply_task, 10)
        return transport

    transport = run_once(asyncio.wait_for(body(), 30))
    first, second = _llm_messages(dashscope)  # asked once each
    assert _said(second) == [
        {"role": "user", "content": "Tell me a long story."},
        {"role": "user", "content": "Never mind."},
    ]
    cut, done = transport.of("text_response")
    assert cut.get("interrupted") is True and not done.get("interrupted")


def test_a_reply_stopped_before_it_ran_abandons_its_early_answer(
    dashscope: DashScopeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user interrupts before the reply has started: the LLM request asked early is
    abandoned (its stream closed before its first piece) and leaves no task behind."""
    dashscope.behaviour.first_token_delay = 0.5
    _slow_user_messages(monkeypatch, [])  # the request is surely out before the reply exists

    async def body() -> Recorder:
        ours = asyncio.all_tasks()
        turns, transport = await _open()
        await turns.text("Hello.", "t1")
        await turns.interrupt()
        await wait_until(lambda: asyncio.all_tasks() <= ours, 5, "the early answer to be dropped")
        await wait_until(lambda: all(r.abandoned for r in dashscope.of("llm")), 5, "the close")
        return transport

    transport = run_once(asyncio.wait_for(body(), 30))
    [_] = dashscope.of("llm")
    assert not transport.of("text_delta") and not transport.of("error")
    assert not Message.objects.exclude(text="").filter(role=sessions.ASSISTANT).exists()


def test_an_early_answer_that_stalls_mid_reply_ends_with_the_llm_error(
    dashscope: DashScopeServer, settings: Any
) -> None:
    """The model sends two words, then only heartbeats (the connection stays busy, so no read
    times out): the provider's own deadline still ends the turn with the LLM's error when the
    request was sent early, and the session answers its next turn."""
    settings.PROVIDER_TIMEOUT_S = 0.5
    settings.PROVIDER_CONNECT_TIMEOUT_S = 0.5

    async def turn(turns: SessionTurns, text: str, ref: str) -> None:
        await turns.text(text, ref)
        assert turns.reply_task is not None
        # not cancelled from here (that might end it another way): the deadline has to
        done, _ = await asyncio.wait({turns.reply_task}, timeout=8)
        assert done, f"turn {ref} still running long after the provider's 1 s deadline"

    async def body() -> Recorder:
        turns, transport = await _open()
        await turn(turns, "Hello.", "t1")
        dashscope.behaviour.llm_fault = Fault("heartbeats")
        await turn(turns, "Tell me about Oslo.", "t2")
        dashscope.behaviour.llm_fault = None
        await turn(turns, "Are you there?", "t3")
        return transport

    transport = run_once(asyncio.wait_for(body(), 30))
    [error] = transport.of("error")
    assert error["ref"] == "t2" and error["code"].startswith("ERR_LLM")
    assert [r["ref"] for r in transport.of("text_response")] == ["t1", "t3"]
    assert all(r.abandoned for r in dashscope.of("llm")[1:2])  # the stalled stream was closed


@pytest.mark.parametrize("kept", [0, 1, 3])
def test_each_turn_is_asked_once_whatever_history_is_kept(
    dashscope: DashScopeServer, settings: Any, kept: int
) -> None:
    """LLM_MAX_HISTORY cuts the conversation the LLM sees; the early request is cut the same
    way, so no turn is asked twice."""
    settings.LLM_MAX_HISTORY = kept

    async def body() -> None:
        turns, _ = await _open()
        for n in range(4):
            await turns.text(f"Message number {n}.", f"t{n}")
            assert turns.reply_task is not None
            await asyncio.wait_for(turns.reply_task, 10)

    before = _asked_again()
    run_once(asyncio.wait_for(body(), 30))
    asked = [_said(messages) for messages in _llm_messages(dashscope)]
    assert len(asked) == 4 and _asked_again() == before
    assert all(len(conversation) == min(kept, 2 * n + 1) for n, conversation in enumerate(asked))
