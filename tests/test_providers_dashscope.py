"""The DashScope backends running the real `dashscope` SDK against the loopback DashScope."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.providers import dashscope_ws, get_asr, get_llm, get_tts, reset_providers
from chat.providers.asr import dashscope as dashscope_asr
from chat.providers.base import (
    ASRError,
    ASRProvider,
    ChatTurn,
    Hypothesis,
    LLMError,
    ProviderError,
    TTSError,
)
from chat.providers.cloud import forget_websocket_tls_context, run_once
from chat.providers.text import stream_sentences
from chat.providers.tts import dashscope as dashscope_tts
from harness.procs import ROOT, child_env, wait_for
from tests.exported import this_process
from tests.fakes.dashscope_server import DashScopeServer, Fault, tone
from tests.fakes.tls import loopback_tls

TURN = ChatTurn(
    persona="You are Aria, a travel guide.",
    history=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Where should I go in May?"},
    ],
    avatar_name="Aria",
    language="en-US",
)
SILENCE_100MS = b"\x00\x00" * 1600


async def _collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


def _connections_opened(kind: str) -> float:
    """echo_dashscope_connections_total{kind} as this process exports it."""
    return this_process("echo_dashscope_connections_total", kind=kind)


async def _first(items: AsyncIterator[Any]) -> Any:
    async for item in items:
        return item
    return None


async def _recognise(asr: ASRProvider, chunks: int, sample_rate: int = 16000) -> list[Hypothesis]:
    """Feed `chunks` × 100 ms of audio while reading results, then finish."""
    stream = asr.stream("en-US", sample_rate)
    reader = asyncio.create_task(_collect(stream.results()))
    try:
        for _ in range(chunks):
            await stream.feed(SILENCE_100MS)
            await asyncio.sleep(0.02)
        await stream.finish()
        return await reader
    finally:
        reader.cancel()
        await stream.close()


def _assert_secret_kept(error: ProviderError, key: str, caplog: pytest.LogCaptureFixture) -> None:
    assert key not in str(error)
    assert key not in error.provider_message
    assert key not in caplog.text


# --- LLM ------------------------------------------------------------------------------------
def test_llm_streams_the_reply_piece_by_piece(dashscope: DashScopeServer) -> None:
    pieces = run_once(_collect(get_llm().stream_reply(TURN)))
    assert len(pieces) > 3
    assert "".join(pieces) == "You said: Where should I go in May?. I am a fake Qwen. Ask me more!"


def test_llm_goes_through_the_proxy_of_the_environment(
    dashscope: DashScopeServer, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a proxy (HTTPS_PROXY / HTTP_PROXY, as for any HTTP client) the reply still comes:
    the service's host here does not resolve, only the proxy (the fake, which serves the
    absolute URL it is asked for) can reach it."""
    settings.DASHSCOPE_HTTP_BASE_URL = "http://dashscope.invalid/api/v1"
    monkeypatch.setenv("HTTP_PROXY", dashscope.http_base_url.split("/api/")[0])
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    reply = run_once(get_llm().reply(TURN))
    assert reply.startswith("You said")
    assert dashscope.of("llm")


@pytest.mark.parametrize("loop_at_exit", ["open", "closed", "running on a thread"])
def test_the_http_session_ends_with_its_process_without_an_error(loop_at_exit: str) -> None:
    """The loop's HTTP session lives as long as the process: at exit it is closed whether its
    loop is still open (a web process), closed, or running on a thread of its own (a worker's
    publishing loop), with no "unclosed session" error in the log."""
    script = f"""
import asyncio, os, threading
import django
django.setup()
from chat.providers.cloud import dashscope_http_session
async def made():
    return dashscope_http_session()
loop = asyncio.new_event_loop()
if {loop_at_exit!r} == "running on a thread":
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(made(), loop).result(10)
else:
    loop.run_until_complete(made())
    if {loop_at_exit!r} == "closed":
        loop.close()
print("made")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(DJANGO_SETTINGS_MODULE="echoproject.settings"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "made" in done.stdout, done.stderr
    assert "nclosed" not in done.stderr, done.stderr


def test_llm_sends_persona_history_key_and_streaming_flags(dashscope: DashScopeServer) -> None:
    run_once(get_llm().reply(TURN))
    (request,) = dashscope.of("llm")
    assert request.authorization == f"Bearer {dashscope.api_key}"
    assert request.headers.get("X-DashScope-SSE") == "enable"
    assert request.payload["model"] == "qwen-plus"
    assert request.payload["parameters"]["incremental_output"] is True
    messages = request.payload["input"]["messages"]
    assert messages[0]["role"] == "system"
    assert "You are Aria" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "Where should I go in May?"}


def test_llm_history_is_limited_by_setting(dashscope: DashScopeServer, settings: Any) -> None:
    settings.LLM_MAX_HISTORY = 1
    run_once(get_llm().reply(TURN))
    messages = dashscope.of("llm")[0].payload["input"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]


def test_llm_reply_splits_into_sentences_while_streaming(dashscope: DashScopeServer) -> None:
    sentences = run_once(_collect(stream_sentences(get_llm().stream_reply(TURN))))
    assert sentences == [
        "You said: Where should I go in May?.",
        "I am a fake Qwen.",
        "Ask me more!",
    ]


def test_streams_leave_next_to_no_cyclic_garbage(dashscope: DashScopeServer) -> None:
    """What a recognition, a reply and its sentences leave behind is freed as they end, not
    left in reference cycles for the cyclic collector: its passes hold the event loop, and
    every session's audio, for as long as they take, which grows with what they free (the
    SDK's own recogniser and websocket app left ~80 and ~95 objects per stream)."""
    turns = 8

    async def turn() -> None:
        assert (await _recognise(get_asr(), chunks=3))[-1].final
        assert await get_llm().reply(TURN)
        for sentence in ("Hello there.", "How are you?"):
            assert [chunk async for chunk in get_tts().stream(sentence, "", "en-US")]

    async def garbage_per_turn() -> float:
        await turn()  # what lasts (connections kept open, pooled threads) is made here
        await asyncio.sleep(0.5)
        gc.collect()
        gc.disable()
        try:
            for _ in range(turns):
                await turn()
            await asyncio.sleep(0.5)  # the sockets' threads end their sentences
            return gc.collect() / turns
        finally:
            gc.enable()

    per_turn = run_once(garbage_per_turn())
    # The loopback fake (in this process) leaves a few of its own per connection.
    assert per_turn < 60, per_turn


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [
        (Fault("http", 400, "InvalidParameter", "bad messages"), False),
        (Fault("http", 429, "Throttling.RateQuota", "slow down"), True),
        (Fault("http", 500, "InternalError", "boom"), True),
        (Fault("midstream", 500, "InternalError", "broke mid-way"), True),
        (Fault("midstream", 400, "DataInspectionFailed", "inappropriate"), False),
        (Fault("drop"), True),
    ],
)
def test_llm_failures_map_to_llm_error(
    dashscope: DashScopeServer, fault: Fault, retryable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    dashscope.behaviour.llm_fault = fault
    with caplog.at_level(logging.DEBUG), pytest.raises(LLMError) as caught:
        run_once(get_llm().reply(TURN))
    assert caught.value.code == "ERR_LLM_FAILED"
    assert caught.value.retryable is retryable
    if fault.kind != "drop":
        assert fault.message in caught.value.provider_message
    _assert_secret_kept(caught.value, dashscope.api_key, caplog)


def test_llm_wrong_key_is_not_retryable_and_never_logged(
    dashscope: DashScopeServer, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-key-0123456789abcdef"
    settings.DASHSCOPE_API_KEY = wrong
    with caplog.at_level(logging.DEBUG), pytest.raises(LLMError) as caught:
        run_once(get_llm().reply(TURN))
    assert caught.value.retryable is False
    assert "401" in str(caught.value)
    assert dashscope.of("llm")[0].authorization == f"Bearer {wrong}"
    _assert_secret_kept(caught.value, wrong, caplog)


def test_llm_timeout_is_bounded_by_settings(dashscope: DashScopeServer, settings: Any) -> None:
    settings.PROVIDER_TIMEOUT_S = 0.5
    settings.PROVIDER_CONNECT_TIMEOUT_S = 0.5
    dashscope.behaviour.llm_fault = Fault("hang")
    with pytest.raises(LLMError) as caught:
        run_once(get_llm().reply(TURN))
    assert caught.value.retryable is True


def test_llm_refused_connection_is_retryable(dashscope: DashScopeServer, settings: Any) -> None:
    settings.DASHSCOPE_HTTP_BASE_URL = "http://127.0.0.1:9/api/v1"
    with pytest.raises(LLMError) as caught:
        run_once(get_llm().reply(TURN))
    assert caught.value.retryable is True


# --- realtime ASR ---------------------------------------------------------------------------
def test_asr_stream_gives_interim_then_final_hypotheses(dashscope: DashScopeServer) -> None:
    results = run_once(_recognise(get_asr(), chunks=10))
    interim = [h for h in results if not h.final]
    final = [h for h in results if h.final]
    assert interim, results
    assert results.index(interim[0]) < results.index(final[0])
    assert final[-1].text == "hello world how are you"


def test_asr_stream_sends_the_audio_and_parameters(dashscope: DashScopeServer) -> None:
    run_once(_recognise(get_asr(), chunks=5))
    (task,) = dashscope.of("asr")
    assert task.authorization == f"Bearer {dashscope.api_key}"
    assert task.audio_bytes == 5 * len(SILENCE_100MS)
    assert task.payload["model"] == "paraformer-realtime-v2"
    assert task.payload["parameters"]["sample_rate"] == 16000
    assert task.payload["parameters"]["format"] == "pcm"
    assert task.payload["parameters"]["language_hints"] == ["en"]
    assert task.actions[0] == "run-task" and task.actions[-1] == "finish-task"


def test_asr_stream_sends_20ms_frames_in_100ms_chunks(dashscope: DashScopeServer) -> None:
    """The realtime path feeds 20 ms frames; the service gets the same audio in 100 ms
    chunks (one websocket message each), the odd rest at the end."""

    async def run() -> list[Hypothesis]:
        stream = get_asr().stream("en-US", 16000)
        reader = asyncio.create_task(_collect(stream.results()))
        frame = SILENCE_100MS[: len(SILENCE_100MS) // 5]
        for _ in range(23):
            await stream.feed(frame)
            await asyncio.sleep(0.005)
        await stream.finish()
        try:
            return await reader
        finally:
            await stream.close()

    results = run_once(run())
    assert results[-1].final and results[-1].text == "hello world how are you"
    (task,) = dashscope.of("asr")
    assert task.audio_bytes == 23 * len(SILENCE_100MS) // 5
    assert task.audio_frames == 5  # 4 × 100 ms + the last 60 ms


def test_asr_stream_results_arrive_while_the_speaker_pauses(dashscope: DashScopeServer) -> None:
    """An interim result the service sends is delivered even when no audio follows it (the
    SDK's own sender reads nothing while its queue is empty)."""

    async def run() -> tuple[list[Hypothesis], float]:
        stream = get_asr().stream("en-US", 16000)
        results: list[Hypothesis] = []
        first = asyncio.Event()

        async def read() -> None:
            async for hypothesis in stream.results():
                results.append(hypothesis)
                first.set()

        reader = asyncio.create_task(read())
        try:
            for _ in range(3):  # 300 ms: the fake answers an interim per 200 ms of audio
                await stream.feed(SILENCE_100MS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first.wait(), 3.0)
            heard = [h for h in results if not h.final]
            await stream.finish()
            await reader
            return heard, len(results)
        finally:
            reader.cancel()
            await stream.close()

    heard, total = run_once(run())
    assert heard and not heard[0].final, "no interim result while no audio was sent"
    assert total > len(heard)  # the final came after finish()


def test_asr_streams_of_a_loop_take_turns_on_one_connection(
    dashscope: DashScopeServer, on_loop: Callable[..., Any]
) -> None:
    """After task-finished the socket waits for the loop's next utterance: the results end
    there (no close handshake after them), and the next stream starts with its run-task, no
    handshake."""
    asr = get_asr()
    opened = _connections_opened("asr")
    for _ in range(3):
        results = on_loop(_recognise(asr, chunks=3))
        assert results[-1].final and results[-1].text == "hello world how are you"
    tasks = dashscope.of("asr")
    assert len(tasks) == 3 and {task.connection for task in tasks} == {1}
    assert dashscope.connections == 1 and _connections_opened("asr") == opened + 1
    assert all(
        task.actions[0] == "run-task" and task.actions[-1] == "finish-task" for task in tasks
    )
    assert wait_for(lambda: dashscope.idle_connections == 1, 5), "the socket was not kept"


def test_asr_closing_the_provider_closes_its_waiting_connection(
    dashscope: DashScopeServer, settings: Any, on_loop: Callable[..., Any]
) -> None:
    settings.TTS_BACKEND = "espeak"  # the recogniser alone holds DashScope sockets
    assert on_loop(_recognise(get_asr(), chunks=3))[-1].final
    assert wait_for(lambda: dashscope.idle_connections == 1, 5), "the socket was not kept"
    reset_providers()
    assert wait_for(lambda: dashscope.idle_connections == 0, 5), "the socket was left open"


def test_asr_a_waiting_connection_the_service_closed_is_not_used(
    dashscope: DashScopeServer, on_loop: Callable[..., Any]
) -> None:
    asr = get_asr()
    assert on_loop(_recognise(asr, chunks=3))[-1].final
    assert wait_for(lambda: dashscope.idle_connections == 1, 5), "the socket was not kept"
    assert dashscope.close_idle() == {1}
    results = on_loop(_recognise(asr, chunks=3))
    assert results[-1].final and results[-1].text == "hello world how are you"
    first, second = dashscope.of("asr")
    assert (first.connection, second.connection) == (1, 2)
    assert second.audio_bytes == 3 * len(SILENCE_100MS)  # all of it, on the new connection


def test_asr_a_stream_closed_before_its_end_closes_its_connection(
    dashscope: DashScopeServer, on_loop: Callable[..., Any]
) -> None:
    """A stream closed mid-utterance (a barge-in's recogniser, a session that ends) does not
    leave its socket for the next utterance: the service is still at its task."""
    asr = get_asr()

    async def cut_short() -> None:
        stream = asr.stream("en-US", 16000)
        await stream.feed(SILENCE_100MS)
        assert await asyncio.wait_for(_first(stream.results()), 5)
        await stream.close()

    dashscope.behaviour.asr_interim_every_bytes = len(SILENCE_100MS)
    on_loop(cut_short())
    assert wait_for(lambda: dashscope.of("asr")[0].close_code is not None, 5), "still open"
    assert dashscope.idle_connections == 0
    assert on_loop(_recognise(asr, chunks=3))[-1].final
    assert [task.connection for task in dashscope.of("asr")] == [1, 2]


def test_asr_stream_ends_itself_after_the_silence_timeout(
    dashscope: DashScopeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream no audio comes to ends on its own after the SDK's silence timeout (23 s;
    shortened here), as the SDK's own timer did: the task is finished, the results end."""
    monkeypatch.setattr(dashscope_asr, "SILENCE_TIMEOUT_S", 0.5)

    async def run() -> tuple[list[Hypothesis], float]:
        stream = get_asr().stream("en-US", 16000)
        try:
            await stream.feed(SILENCE_100MS)
            started = time.monotonic()
            results = await asyncio.wait_for(_collect(stream.results()), 10)
            return results, time.monotonic() - started
        finally:
            await stream.close()

    results, took = run_once(run())
    assert 0.4 < took < 5, took
    (task,) = dashscope.of("asr")
    assert task.actions[-1] == "finish-task"
    assert task.audio_bytes == len(SILENCE_100MS)


def test_streams_never_make_the_loop_wait_for_a_thread_to_start(
    dashscope: DashScopeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Thread.start()` blocks until the new thread has run: on a busy machine that holds the
    event loop, and every session's audio with it. A whole recognition, reply and sentence
    start none on the loop's thread."""
    original = threading.Thread.start
    started_on: list[str] = []

    def recording_start(thread: threading.Thread) -> None:
        started_on.append(threading.current_thread().name + " → " + thread.name)
        original(thread)

    async def turn() -> tuple[list[Hypothesis], str, bytes]:
        results = await _recognise(get_asr(), chunks=5)
        reply = "".join([piece async for piece in get_llm().stream_reply(TURN)])
        audio = b"".join([chunk async for chunk in get_tts().stream("Hello there.", "", "en-US")])
        return results, reply, audio

    async def second_turn() -> tuple[list[Hypothesis], str, bytes]:
        # The first turn of a loop starts what lasts: the pool's starter thread, the loop's
        # executor threads (the SDK's HTTP client looks up proxy settings there).
        await turn()
        monkeypatch.setattr(threading.Thread, "start", recording_start)
        try:
            return await turn()
        finally:
            monkeypatch.setattr(threading.Thread, "start", original)

    loop_thread = threading.current_thread().name
    results, reply, audio = run_once(second_turn())
    assert results[-1].text == "hello world how are you" and reply and audio
    assert not [s for s in started_on if s.startswith(loop_thread + " →")], started_on


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [
        (Fault("task-failed", code="InvalidParameter", message="bad sample rate"), False),
        (Fault("task-failed", code="InternalError", message="engine crashed"), True),
        (Fault("drop"), True),
    ],
)
def test_asr_stream_failures_map_to_asr_error(
    dashscope: DashScopeServer, fault: Fault, retryable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    dashscope.behaviour.asr_fault = fault
    with caplog.at_level(logging.DEBUG), pytest.raises(ASRError) as caught:
        run_once(_recognise(get_asr(), chunks=5))
    assert caught.value.code == "ERR_ASR_FAILED"
    assert caught.value.retryable is retryable
    _assert_secret_kept(caught.value, dashscope.api_key, caplog)


def test_asr_stream_refused_handshake_is_retryable(dashscope: DashScopeServer) -> None:
    dashscope.behaviour.ws_handshake_status = 503
    with pytest.raises(ASRError) as caught:
        run_once(_recognise(get_asr(), chunks=3))
    assert caught.value.retryable is True
    assert "503" in str(caught.value)


def test_asr_stream_wrong_key_is_rejected(dashscope: DashScopeServer, settings: Any) -> None:
    settings.DASHSCOPE_API_KEY = "sk-wrong-asr-key-0123456789"
    with pytest.raises(ASRError) as caught:
        run_once(_recognise(get_asr(), chunks=3))
    assert caught.value.retryable is False
    assert "sk-wrong-asr-key" not in str(caught.value)


def test_asr_stream_timeout_after_finish_is_bounded(
    dashscope: DashScopeServer, settings: Any
) -> None:
    settings.PROVIDER_TIMEOUT_S = 0.5
    dashscope.behaviour.asr_fault = Fault("hang")
    with pytest.raises(ASRError) as caught:
        run_once(_recognise(get_asr(), chunks=2))
    assert caught.value.retryable is True


# --- file ASR -------------------------------------------------------------------------------
def test_file_asr_sends_the_public_url(dashscope: DashScopeServer) -> None:
    url = "https://bucket.example.com/session/utterance.wav?sig=abc"
    text = run_once(get_asr().recognize_file("/nonexistent.wav", url, "zh-CN"))
    assert text == "hello from the uploaded file"
    (request,) = dashscope.of("file-asr")
    assert request.payload["model"] == "qwen3-asr-flash"
    assert request.payload["input"]["messages"][0]["content"] == [{"audio": url}]
    assert request.authorization == f"Bearer {dashscope.api_key}"


def test_file_asr_without_public_url_refuses_clearly(dashscope: DashScopeServer) -> None:
    with pytest.raises(ASRError) as caught:
        run_once(get_asr().recognize_file("/tmp/x.wav", "", "en-US"))
    assert caught.value.retryable is False
    assert dashscope.of("file-asr") == []


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [(Fault("http", 400, "InvalidParameter", "bad url"), False), (Fault("http", 503), True)],
)
def test_file_asr_failures_map_to_asr_error(
    dashscope: DashScopeServer, fault: Fault, retryable: bool
) -> None:
    dashscope.behaviour.file_asr_fault = fault
    with pytest.raises(ASRError) as caught:
        run_once(get_asr().recognize_file("", "https://example.com/a.wav", "en-US"))
    assert caught.value.retryable is retryable


def test_file_asr_timeout_is_bounded(dashscope: DashScopeServer, settings: Any) -> None:
    settings.PROVIDER_TIMEOUT_S = 0.5
    settings.PROVIDER_CONNECT_TIMEOUT_S = 0.5
    dashscope.behaviour.file_asr_fault = Fault("hang")
    with pytest.raises(ASRError) as caught:
        run_once(get_asr().recognize_file("", "https://example.com/a.wav", "en-US"))
    assert caught.value.retryable is True


# --- TTS ------------------------------------------------------------------------------------
def test_tts_streams_audio_chunks_for_the_text(dashscope: DashScopeServer) -> None:
    text = "Hello there, traveller. May is lovely in Lisbon."
    chunks = run_once(_collect(get_tts().stream(text, "longxiaochun_v2", "en-US")))
    assert len(chunks) > 1
    audio = b"".join(chunks)
    assert get_tts().sample_rate == 24000
    expected = len(text) * 0.06 * 24000 * 2
    assert abs(len(audio) - expected) < 24000 * 2 * 0.2
    (task,) = dashscope.of("tts")
    assert task.texts == [text]
    assert task.payload["parameters"]["voice"] == "longxiaochun_v2"
    assert task.payload["parameters"]["format"] == "pcm"
    assert task.payload["parameters"]["sample_rate"] == 24000
    assert task.authorization == f"Bearer {dashscope.api_key}"


def test_tts_espeak_voice_names_fall_back_to_the_default_voice(
    dashscope: DashScopeServer,
) -> None:
    run_once(get_tts().synthesize("Hi.", "en-us+f3", "en-US"))
    assert dashscope.of("tts")[0].payload["parameters"]["voice"] == "longxiaochun_v2"


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [
        (Fault("task-failed", code="InvalidParameter", message="unknown voice"), False),
        (Fault("task-failed", code="InternalError", message="engine crashed"), True),
        (Fault("drop"), True),
    ],
)
def test_tts_failures_map_to_tts_error(
    dashscope: DashScopeServer, fault: Fault, retryable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    dashscope.behaviour.tts_fault = fault
    with caplog.at_level(logging.DEBUG), pytest.raises(TTSError) as caught:
        run_once(get_tts().synthesize("Hello there.", "longxiaochun_v2", "en-US"))
    assert caught.value.code == "ERR_TTS_FAILED"
    assert caught.value.retryable is retryable
    _assert_secret_kept(caught.value, dashscope.api_key, caplog)


def test_tts_refused_handshake_is_reported_at_once(
    dashscope: DashScopeServer, caplog: pytest.LogCaptureFixture
) -> None:
    dashscope.behaviour.ws_handshake_status = 503
    with caplog.at_level(logging.DEBUG), pytest.raises(TTSError) as caught:
        run_once(get_tts().synthesize("Hello there.", "longxiaochun_v2", "en-US"))
    assert caught.value.retryable is True
    _assert_secret_kept(caught.value, dashscope.api_key, caplog)


def test_tts_wrong_key_is_not_retryable_and_never_logged(
    dashscope: DashScopeServer, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-tts-key-0123456789abcdef"
    settings.DASHSCOPE_API_KEY = wrong
    with caplog.at_level(logging.DEBUG), pytest.raises(TTSError) as caught:
        run_once(get_tts().synthesize("Hello there.", "longxiaochun_v2", "en-US"))
    assert caught.value.retryable is False
    _assert_secret_kept(caught.value, wrong, caplog)


def test_tts_timeout_is_bounded(dashscope: DashScopeServer, settings: Any) -> None:
    settings.PROVIDER_TIMEOUT_S = 0.5
    dashscope.behaviour.tts_fault = Fault("hang")
    with pytest.raises(TTSError) as caught:
        run_once(get_tts().synthesize("Hello there.", "longxiaochun_v2", "en-US"))
    assert caught.value.retryable is True


# --- CosyVoice connections: reused, opened ahead, on the loop -------------------------------
async def _ready(tts: Any) -> int:
    """Sockets waiting for a sentence on the running loop."""
    return dashscope_ws.connections().ready(tts.service())


def _tts_after_one_sentence(
    settings: Any, dashscope: DashScopeServer, run: Callable[..., Any], size: int
) -> Any:
    """The TTS provider after one sentence on `run`'s loop, with `size` sockets or more
    waiting (its own, back after its task, and those opened ahead)."""
    settings.DASHSCOPE_TTS_PRECONNECT = size
    tts = get_tts()
    assert run(tts.synthesize("First.", "longxiaochun_v2", "en-US"))
    assert wait_for(lambda: run(_ready(tts)) == dashscope.idle_connections >= max(size, 1), 5), (
        "condition not reached in time"
    )
    return tts


def test_tts_a_connection_speaks_one_sentence_after_another(
    dashscope: DashScopeServer, settings: Any, on_loop: Callable[..., Any]
) -> None:
    """With nothing opened ahead, the sentences of a loop still share one connection: each
    after the previous one's task finished, whatever its voice, with no handshake."""
    settings.DASHSCOPE_TTS_PRECONNECT = 0
    tts = get_tts()
    opened = _connections_opened("tts")
    spoken = [
        ("One.", "longxiaochun_v2", "en-US"),
        ("Two more.", "longxiaochun_v2", "en-US"),
        ("Three.", "longwan_v2", "zh-CN"),
    ]
    for text, voice, language in spoken:
        assert on_loop(tts.synthesize(text, voice, language))
    tasks = dashscope.of("tts")
    assert [task.texts for task in tasks] == [[text] for text, _, _ in spoken]
    assert dashscope.connections == 1 and {task.connection for task in tasks} == {1}
    assert [task.payload["parameters"]["voice"] for task in tasks] == [v for _, v, _ in spoken]
    assert tasks[-1].payload["parameters"]["language_hints"] == ["zh"]
    time.sleep(0.2)
    assert dashscope.idle_connections == 1  # waiting for the next sentence
    assert _connections_opened("tts") == opened + 1  # what operators see of it


@pytest.mark.parametrize("stray", ["task-finished", "task-failed"])
def test_tts_events_of_another_task_do_not_end_a_sentence(
    dashscope: DashScopeServer, settings: Any, on_loop: Callable[..., Any], stray: str
) -> None:
    """A reused connection may still carry an event of its last task: a sentence reads only
    its own task's."""
    settings.DASHSCOPE_TTS_PRECONNECT = 0
    tts = get_tts()
    dashscope.behaviour.tts_stray_event = stray
    for text in ("One.", "Two more words."):
        audio = on_loop(tts.synthesize(text, "longxiaochun_v2", "en-US"))
        seconds = len(text) * dashscope.behaviour.tts_seconds_per_char
        assert audio == tone(seconds, dashscope_tts.SAMPLE_RATE)  # the whole sentence
    assert dashscope.connections == 1


def test_tts_sentences_start_on_connections_open_before_they_were_asked_for(
    dashscope: DashScopeServer, settings: Any, on_loop: Callable[..., Any]
) -> None:
    tts = _tts_after_one_sentence(settings, dashscope, on_loop, size=2)
    asked = time.monotonic()

    async def together() -> list[bytes]:
        texts = ("Second one.", "And a third.")
        return await asyncio.gather(*(tts.synthesize(t, "longxiaochun_v2", "en-US") for t in texts))

    second, third = on_loop(together())
    assert len(second) > 0 and len(third) > len(second)
    _, *later = sorted(dashscope.of("tts"), key=lambda task: task.started_at or 0)
    assert sorted(task.texts for task in later) == [["And a third."], ["Second one."]]
    # Both ran at once, each on a socket whose handshake was over before it was asked for.
    assert len({task.connection for task in later}) == 2
    assert all(task.opened_at < asked < (task.started_at or 0) for task in later)
    assert all(task.authorization == f"Bearer {dashscope.api_key}" for task in later)


def test_tts_sentences_start_no_thread(
    dashscope: DashScopeServer,
    settings: Any,
    on_loop: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The text goes out and the audio comes back on the event loop: a sentence, on a new
    connection or on one that waited, starts no thread (on a busy machine every hand-over
    between threads waits for the GIL)."""
    started: list[str] = []
    start = threading.Thread.start

    def recording_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    settings.DASHSCOPE_TTS_PRECONNECT = 0
    tts = get_tts()
    monkeypatch.setattr(threading.Thread, "start", recording_start)
    for text in ("On a new connection.", "On the same one."):
        assert len(on_loop(tts.synthesize(text, "longxiaochun_v2", "en-US"))) > 0
    monkeypatch.undo()
    assert started == []
    tasks = dashscope.of("tts")
    assert [task.actions for task in tasks] == [["run-task", "continue-task", "finish-task"]] * 2


def test_tts_connections_the_service_closed_are_not_used(
    dashscope: DashScopeServer, settings: Any, on_loop: Callable[..., Any]
) -> None:
    tts = _tts_after_one_sentence(settings, dashscope, on_loop, size=2)
    closed = dashscope.close_idle()
    assert len(closed) >= 2
    assert on_loop(tts.synthesize("Still here.", "longxiaochun_v2", "en-US"))
    last = dashscope.of("tts")[-1]
    assert last.texts == ["Still here."]
    assert last.connection not in closed  # spoken on a connection still open


def test_tts_waiting_connections_are_renewed_and_kept_while_the_service_is_used(
    dashscope: DashScopeServer,
    settings: Any,
    on_loop: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dashscope_ws, "RENEW_AFTER_S", 0.5)
    monkeypatch.setattr(dashscope_ws, "MAINTAIN_EVERY_S", 0.1)
    tts = _tts_after_one_sentence(settings, dashscope, on_loop, size=1)
    first = dashscope.connections
    # A socket that waited longer than RENEW_AFTER_S is closed and another opened instead.
    assert wait_for(lambda: dashscope.connections > first, 5), "no socket renewed"
    assert wait_for(lambda: on_loop(_ready(tts)) == dashscope.idle_connections == 1, 5)
    monkeypatch.setattr(dashscope_ws, "KEEP_FOR_S", 0.0)
    # A service not used for KEEP_FOR_S gets nothing opened ahead: the last socket goes.
    assert wait_for(lambda: dashscope.idle_connections == 0, 5), "sockets kept for nothing"
    assert on_loop(tts.synthesize("Later.", "longxiaochun_v2", "en-US"))


def test_tts_closing_the_provider_closes_its_waiting_connections(
    dashscope: DashScopeServer, settings: Any, on_loop: Callable[..., Any]
) -> None:
    _tts_after_one_sentence(settings, dashscope, on_loop, size=2)
    reset_providers()
    assert wait_for(lambda: dashscope.idle_connections == 0, 5), "condition not reached in time"


def test_tts_a_loop_that_ends_closes_its_connections(
    dashscope: DashScopeServer, settings: Any
) -> None:
    """A command or a test runs its sentences on a loop of its own (`run_once`, or
    `asyncio.run`): its sockets end with it, without an error."""
    settings.DASHSCOPE_TTS_PRECONNECT = 2
    assert run_once(get_tts().synthesize("One.", "longxiaochun_v2", "en-US"))
    assert asyncio.run(get_tts().synthesize("Two.", "longxiaochun_v2", "en-US"))
    assert wait_for(lambda: dashscope.idle_connections == 0, 5), "sockets left open"
    assert [task.texts for task in dashscope.of("tts")] == [["One."], ["Two."]]


def test_tts_a_sentence_given_up_closes_its_connection(
    dashscope: DashScopeServer, settings: Any, on_loop: Callable[..., Any]
) -> None:
    """A sentence abandoned mid-audio (a barge-in) is not waited for: its socket is closed, and
    the next sentence takes another."""
    settings.DASHSCOPE_TTS_PRECONNECT = 0
    dashscope.behaviour.tts_chunk_delay = 0.05
    tts = get_tts()

    async def first_chunk() -> bytes:
        stream = tts.stream("A long sentence that would take a while to say.", "", "en-US")
        async for chunk in stream:
            await stream.aclose()  # type: ignore[attr-defined]
            return chunk
        return b""

    assert on_loop(first_chunk())
    assert wait_for(lambda: dashscope.idle_connections == 0, 5), "the socket was kept"
    dashscope.behaviour.tts_chunk_delay = 0.0
    assert on_loop(tts.synthesize("Next.", "", "en-US"))
    given_up, spoken = dashscope.of("tts")
    assert given_up.texts and spoken.texts == ["Next."]
    assert (given_up.connection, spoken.connection) == (1, 2)


# --- CosyVoice over TLS ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_dashscope_server(tmp_path_factory: Any) -> Iterator[tuple[DashScopeServer, Path]]:
    """The loopback DashScope over TLS (`wss://`), and its CA's certificate file."""
    ca, server_tls = loopback_tls(tmp_path_factory.mktemp("tls"))
    server = DashScopeServer(tls=server_tls).start()
    yield server, ca
    server.stop()


@pytest.fixture
def tls_tts(
    dashscope: DashScopeServer,
    tls_dashscope_server: tuple[DashScopeServer, Path],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[DashScopeServer, Path]]:
    """TTS pointed at the TLS fake; the CA bundle is the system's until a test names one."""
    server, ca = tls_dashscope_server
    server.reset()
    monkeypatch.delenv("WEBSOCKET_CLIENT_CA_BUNDLE", raising=False)
    forget_websocket_tls_context()
    settings.DASHSCOPE_WEBSOCKET_BASE_URL = server.websocket_url
    yield server, ca
    reset_providers()
    forget_websocket_tls_context()


def test_tts_over_tls_loads_the_ca_certificates_once_for_every_socket(
    tls_tts: tuple[DashScopeServer, Path],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    on_loop: Callable[..., Any],
) -> None:
    server, ca = tls_tts
    monkeypatch.setenv("WEBSOCKET_CLIENT_CA_BUNDLE", str(ca))
    loads: list[Any] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append((args, kwargs))
        load(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    settings.DASHSCOPE_TTS_PRECONNECT = 2
    tts = get_tts()
    texts = ["First one.", "Second one.", "And a third."]

    async def together() -> list[bytes]:
        return await asyncio.gather(*(tts.synthesize(t, "longxiaochun_v2", "en-US") for t in texts))

    assert all(len(audio) > 0 for audio in on_loop(together()))
    assert sorted(task.texts for task in server.of("tts")) == sorted([text] for text in texts)
    assert wait_for(lambda: server.idle_connections >= 3, 5), "the sockets were not kept"
    # three sockets or more (three sentences at once, and those opened ahead), one loading of
    # the CA file
    assert server.connections >= 3 and len(loads) == 1


def test_tts_over_tls_refuses_a_server_its_ca_bundle_does_not_trust(
    tls_tts: tuple[DashScopeServer, Path], settings: Any
) -> None:
    server, _ = tls_tts  # the system's CAs: the fake's own CA is not among them
    settings.DASHSCOPE_TTS_PRECONNECT = 0
    with pytest.raises(TTSError):
        run_once(get_tts().synthesize("Hello there.", "longxiaochun_v2", "en-US"))
    assert server.of("tts") == []


# --- abandoning streams (barge-in) ----------------------------------------------------------
def test_tts_stream_can_be_abandoned_after_the_first_chunk(dashscope: DashScopeServer) -> None:
    dashscope.behaviour.tts_chunk_delay = 0.05

    async def first_chunk() -> bytes:
        stream = get_tts().stream("A long sentence that would take a while to say.", "", "en-US")
        async for chunk in stream:
            await stream.aclose()  # type: ignore[attr-defined]
            return chunk
        return b""

    assert run_once(first_chunk())
    # The next utterance works as usual.
    assert run_once(get_tts().synthesize("Next.", "", "en-US"))


def test_llm_stream_can_be_abandoned_after_the_first_piece(dashscope: DashScopeServer) -> None:
    dashscope.behaviour.token_delay = 0.05

    async def first_piece() -> str:
        stream = get_llm().stream_reply(TURN)
        async for piece in stream:
            await stream.aclose()  # type: ignore[attr-defined]
            return piece
        return ""

    assert run_once(first_piece()) == "You "
    assert run_once(get_llm().reply(TURN)).startswith("You said")
