"""A worker's pool process SIGKILLed at each stage of an upload turn (transcribe, reply,
synthesize, render): the step is redelivered and the turn completes once; a step that kills its
worker every time fails after CELERY_TASK_MAX_DELIVERIES with the stage's error code, kept on
the message, and the session goes on.

A stack of its own (Redis database, daphne, a speech worker and a render worker, one pool
process each) talks to the loopback DashScope, whose delays and hangs hold each step long
enough to kill its process while it runs.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.conf import settings

from chat.models import Message
from tests.audio import speak
from tests.fakes.dashscope_server import DashScopeServer, Fault
from tests.fixtures_rendering import RENDER_ENV
from tests.fixtures_sessions import Client, run
from tests.isolation import separate_redis
from tests.procs import Proc, child_env, kill_pool_child, start_celery_worker, start_daphne

pytestmark = pytest.mark.usefixtures("live_avatars")

MAX_DELIVERIES = 3
UTTERANCE = "tell me something about the sea"
Event = dict[str, Any]


@dataclass
class Stack:
    ws_url: str
    http_url: str
    speech: Proc
    render: Proc


@pytest.fixture(scope="module")
def stack(
    django_db_setup: None, log_dir: Path, dashscope_server: DashScopeServer
) -> Iterator[Stack]:
    with separate_redis() as redis_url:
        env = child_env(
            REDIS_URL=redis_url,
            ASR_BACKEND="dashscope",
            LLM_BACKEND="dashscope",
            TTS_BACKEND="dashscope",
            DASHSCOPE_API_KEY=dashscope_server.api_key,
            DASHSCOPE_HTTP_BASE_URL=dashscope_server.http_base_url,
            DASHSCOPE_WEBSOCKET_BASE_URL=dashscope_server.websocket_url,
            DASHSCOPE_TTS_PRECONNECT="0",
            PUBLIC_BASE_URL="http://127.0.0.1:9",  # file ASR needs a URL; the fake never fetches it
            PROVIDER_TIMEOUT_S="60",  # a hanging provider call lasts until the test kills it
            CELERY_TASK_MAX_DELIVERIES=str(MAX_DELIVERIES),
            **RENDER_ENV,
        )
        procs: list[Proc] = []
        try:
            for queue in ("speech", "render"):
                procs.append(
                    start_celery_worker(
                        log_dir, queue, f"loss-{queue}", env=env, concurrency=1, app_env=env
                    )
                )
            web, port = start_daphne(log_dir, env, name="daphne-loss")
            procs.append(web)
            yield Stack(f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}", *procs[:2])
        finally:
            for proc in reversed(procs):
                proc.stop()


@pytest.fixture
def fake(dashscope_server: DashScopeServer) -> Iterator[DashScopeServer]:
    dashscope_server.reset()
    yield dashscope_server
    dashscope_server.reset()


def progress(step: str, state: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "turn_progress" and e["step"] == step and e["state"] == state


def of_type(kind: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == kind


async def until(client: Client, test: Callable[[Event], bool], timeout: float = 60) -> Event:
    """Read events until one passes `test`; an `error` on the way fails the test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await client.recv(max(0.1, deadline - loop.time()))
        if test(event):
            return event
        assert event["type"] != "error", f"unexpected error: {event}"


async def drain(client: Client, seconds: float) -> None:
    """Collect whatever else arrives within `seconds` (a repeated event would show here)."""
    try:
        while True:
            await client.recv(seconds)
    except TimeoutError:
        return


def upload(stack: Stack, init: Event, ref: str) -> int:
    """The utterance as an HTTP upload with `?id=` (its ref); the user message's id."""
    request = urllib.request.Request(
        f"{stack.http_url}/api/sessions/{init['session_id']}/audio?id={ref}",
        data=speak(UTTERANCE).read_bytes(),
        headers={"Authorization": f"Bearer {init['session_token']}", "Content-Type": "audio/wav"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.status == 202
        return json.loads(response.read())["message_id"]


async def killed_turn(
    stack: Stack,
    mode: str,
    kill_when: Callable[[Event], bool],
    worker: Proc,
    recover: Callable[[], None],
    last: str,
) -> Client:
    """An upload turn whose `worker` loses its pool process when `kill_when` first passes;
    `recover` then lets the redelivered step run normally. Reads up to the `last` event."""
    async with websockets.connect(f"{stack.ws_url}?mode={mode}&avatar=aria", max_size=None) as ws:
        client = Client(ws)
        init = await client.recv()
        client.session_id = init["session_id"]
        client.user_id = await asyncio.to_thread(upload, stack, init, "turn-1")
        await until(client, kill_when)
        await asyncio.to_thread(kill_pool_child, worker)
        recover()
        await until(client, of_type(last), timeout=120)
        await drain(client, 2.0)
        client.files = await asyncio.to_thread(session_files, client.session_id)
        return client  # the session ends with the connection, and its files with it


def session_files(session_id: str) -> set[str]:
    """Storage names of the session's files, while it is open."""
    root = Path(settings.MEDIA_ROOT)
    return {
        str(p.relative_to(root)) for p in (root / "sessions" / session_id).rglob("*") if p.is_file()
    }


def assert_one_complete_turn(
    client: Client, user_text: str = "hello from the uploaded file"
) -> Message:
    """Exactly one of each result event, all of the same messages, and a history without
    errors: the user sees one turn, as if nothing had happened."""
    assert client.of("error") == []
    [asr] = client.of("asr_result")
    [response] = client.of("text_response")
    [complete] = client.of("tts_complete")
    assert asr["message_id"] == client.user_id and asr["text"] == user_text
    assert response["reply_to"] == client.user_id and response["ref"] == "turn-1"
    assert response["text"] == f"You said: {user_text}. I am a fake Qwen. Ask me more!"
    assert complete["audio_url"] and complete["duration_ms"] > 0
    messages = list(Message.objects.filter(session_id=client.session_id).order_by("id"))
    assert [(m.role, m.error_code) for m in messages] == [("user", ""), ("assistant", "")]
    user, reply = messages
    assert user.text == user_text and reply.text == response["text"]
    assert reply.id == response["message_id"] and reply.audio in client.files
    return reply


def redeliveries(client: Client, step: str) -> list[Event]:
    return [e for e in client.events if progress(step, "redelivered")(e)]


def test_transcribe_whose_worker_dies_is_redelivered_and_the_turn_completes_once(
    stack: Stack, fake: DashScopeServer
) -> None:
    fake.behaviour.file_asr_fault = Fault("hang")

    def recover() -> None:
        fake.behaviour.file_asr_fault = None

    client = run(
        killed_turn(
            stack, "voice", progress("transcribe", "started"), stack.speech, recover, "tts_complete"
        ),
        timeout=200,
    )
    assert_one_complete_turn(client)
    [again] = redeliveries(client, "transcribe")
    assert again["attempt"] == 2 and again["message_id"] == client.user_id
    assert again["ref"] == "turn-1"
    assert len([e for e in client.events if progress("transcribe", "started")(e)]) == 2
    assert not [e for e in client.events if progress("transcribe", "failed")(e)]


def test_reply_killed_mid_stream_starts_again_under_the_same_message(
    stack: Stack, fake: DashScopeServer
) -> None:
    fake.behaviour.token_delay = 1.0

    def recover() -> None:
        fake.behaviour.token_delay = 0.0

    client = run(
        killed_turn(stack, "voice", of_type("text_delta"), stack.speech, recover, "tts_complete"),
        timeout=200,
    )
    reply = assert_one_complete_turn(client)
    [again] = redeliveries(client, "reply")
    assert again["attempt"] == 2 and again["reply_message_id"] == reply.id
    deltas = client.of("text_delta")
    assert {d["message_id"] for d in deltas} == {reply.id}
    # the deltas after `redelivered` spell the whole reply again, from its start
    restart = client.events.index(again)
    after = [e["delta"] for e in client.events[restart:] if e["type"] == "text_delta"]
    assert "".join(after).replace(" ", "") == reply.text.replace(" ", "")
    assert len(deltas) > len(after)  # the lost run had sent some before it died


def test_synthesize_killed_mid_speech_is_redelivered_with_one_tts_complete(
    stack: Stack, fake: DashScopeServer
) -> None:
    fake.behaviour.tts_chunk_delay = 1.0

    def recover() -> None:
        fake.behaviour.tts_chunk_delay = 0.0

    client = run(
        killed_turn(stack, "voice", of_type("tts_start"), stack.speech, recover, "tts_complete"),
        timeout=200,
    )
    reply = assert_one_complete_turn(client)
    [again] = redeliveries(client, "synthesize")
    assert again["attempt"] == 2 and again["message_id"] == reply.id
    starts = client.of("tts_start")
    [complete] = client.of("tts_complete")
    # the lost run's speech was abandoned; the one that completes is the redelivered run's
    assert len(starts) == 2 and complete["request_id"] == starts[-1]["request_id"]
    assert client.events.index(starts[0]) < client.events.index(again)


def test_render_whose_worker_dies_is_redelivered_with_one_video_ready(
    stack: Stack, fake: DashScopeServer
) -> None:
    fake.behaviour.reply = (
        "Here is the plan for the whole week. On Monday we walk along the river and visit "
        "the old market, and on Tuesday we take the train into the mountains."
    )
    client = run(
        killed_turn(
            stack, "video", of_type("video_progress"), stack.render, lambda: None, "video_ready"
        ),
        timeout=250,
    )
    assert client.of("error") == []
    [ready] = client.of("video_ready")
    [queued] = client.of("video_queued")
    redelivered = [e for e in client.of("video_progress") if e["stage"] == "redelivered"]
    assert [e["attempt"] for e in redelivered] == [2]
    values = [e["progress"] for e in client.of("video_progress")]
    assert values == sorted(values) and values[-1] == 100
    indices = [e["index"] for e in client.of("video_segment")]
    assert sorted(indices) == list(range(len(indices))), "each segment announced once"
    reply = Message.objects.get(pk=queued["message_id"])
    assert reply.render_task_id == ready["task_id"] and not reply.error_code
    assert reply.video in client.files and ready["duration_ms"] > 0


async def poisoned_turn(
    stack: Stack,
    mode: str,
    dies_when: Callable[[Event], bool],
    worker: Proc,
    release: Callable[[], None],
) -> Client:
    """An upload turn whose step kills its worker every time it runs (the test does the
    killing each time the step shows it is running); then, once `release` has let the
    providers answer again, a text turn on the same session."""
    async with websockets.connect(f"{stack.ws_url}?mode={mode}&avatar=aria", max_size=None) as ws:
        client = Client(ws)
        init = await client.recv()
        client.session_id = init["session_id"]
        client.user_id = await asyncio.to_thread(upload, stack, init, "poison-1")
        client.kills = 0
        for _ in range(MAX_DELIVERIES):
            await until(client, dies_when, timeout=120)
            await asyncio.to_thread(kill_pool_child, worker)
            client.kills += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while (event := await client.recv(max(0.1, deadline - loop.time())))["type"] != "error":
            assert not dies_when(event), "the step ran again past the bound"
        client.failure = event
        await drain(client, 2.0)
        client.turn = list(client.events)  # the poisoned turn's events
        release()
        await client.send(type="text_message", text="Are you still there?", id="after")
        client.after = await until(client, of_type("text_response"))
        return client


# step: (how the loopback DashScope holds it, the stage's code, results the client still gets)
POISONED = {
    "transcribe": ({"file_asr_fault": Fault("hang")}, "ERR_ASR_FAILED", []),
    "reply": ({"first_token_delay": 120.0}, "ERR_LLM_FAILED", ["asr_result"]),
    "synthesize": (
        {"tts_first_chunk_delay": 120.0},
        "ERR_TTS_FAILED",
        ["asr_result", "text_response"],
    ),
}


@pytest.mark.parametrize("step", list(POISONED))
def test_speech_step_that_kills_its_worker_every_time_fails_with_its_error_code(
    stack: Stack, fake: DashScopeServer, step: str
) -> None:
    hold, code, results = POISONED[step]
    for name, value in hold.items():
        setattr(fake.behaviour, name, value)
    client = run(
        poisoned_turn(stack, "voice", progress(step, "started"), stack.speech, fake.reset),
        timeout=280,
    )
    failure = client.failure
    assert failure["code"] == code and failure["ref"] == "poison-1"
    assert failure["retryable"] is False
    started = [e for e in client.events if progress(step, "started")(e)]
    assert len(started) == client.kills == MAX_DELIVERIES
    assert [e["attempt"] for e in redeliveries(client, step)] == [2, 3]
    failed = [e for e in client.events if progress(step, "failed")(e)]
    assert len(failed) == 1 and client.events.index(failed[0]) < client.events.index(failure)
    for kind in ("asr_result", "text_response", "tts_complete"):
        assert len([e for e in client.turn if e["type"] == kind]) == (kind in results), kind
    messages = list(Message.objects.filter(session_id=client.session_id).order_by("id"))
    user, reply = messages[0], messages[1] if len(messages) > 1 else None
    kept = user if step == "transcribe" else reply
    assert kept is not None and kept.error_code == code and "3 times" in kept.error_message
    if step != "transcribe":  # one reply message, however often the step ran
        assert [m.reply_to_id for m in messages[1:2]] == [user.id] and not user.error_code
        assert client.after["message_id"] == messages[-1].id and len(messages) == 4
    assert client.after["ref"] == "after" and client.after["text"]


def test_render_that_kills_its_worker_every_time_fails_with_err_render_failed(
    stack: Stack, fake: DashScopeServer
) -> None:
    def render_running(event: Event) -> bool:
        return event["type"] == "video_progress" and event["stage"] in ("started", "redelivered")

    client = run(
        poisoned_turn(stack, "video", render_running, stack.render, fake.reset), timeout=280
    )
    failure = client.failure
    assert failure["code"] == "ERR_RENDER_FAILED" and failure["ref"] == "poison-1"
    assert client.of("video_ready") == []
    [queued] = client.of("video_queued")
    reply = Message.objects.get(pk=queued["message_id"])
    assert reply.error_code == "ERR_RENDER_FAILED" and "3 times" in reply.error_message
    assert not reply.video and client.of("tts_complete")  # the speech stays
    assert client.after["ref"] == "after" and client.after["text"]
