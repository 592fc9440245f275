"""What operators see of real turns: Prometheus metrics scraped over HTTP from a real web process
and a worker's own endpoint (parsed with prometheus_client's parser), summed over every process
of the machine, and one log line per turn carrying the same session and turn ids in the web
process and the workers, as readable text and as JSON."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.audio import speak
from tests.fakes.dashscope_server import DashScopeServer, Fault
from tests.fixtures_operators import Stack, open_session, operator_stack, text_turn, upload_turn
from tests.fixtures_realtime import ClientPeer
from tests.fixtures_sessions import run
from tests.procs import BIN, Proc, free_port, port_open, start_daphne

pytestmark = pytest.mark.usefixtures("live_avatars")

FIRST_TOKEN_DELAY_S = 0.4

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def text_stack(
    django_db_setup: None, log_dir: Path, dashscope_server: DashScopeServer
) -> Iterator[Stack]:
    yield from operator_stack(log_dir, "ops-text", dashscope_server)


@pytest.fixture(scope="module")
def json_stack(
    django_db_setup: None, log_dir: Path, dashscope_server: DashScopeServer
) -> Iterator[Stack]:
    yield from operator_stack(log_dir, "ops-json", dashscope_server, LOG_FORMAT="json")


@pytest.fixture
def fake(dashscope_server: DashScopeServer) -> Iterator[DashScopeServer]:
    dashscope_server.reset()
    yield dashscope_server
    dashscope_server.reset()


# --- scraping ----------------------------------------------------------------------------------


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=15) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def web_metrics(stack: Stack) -> Samples:
    return scrape(f"http://127.0.0.1:{stack.port}/metrics")


def until_metric(stack: Stack, check: Any, what: str, timeout: float = 30.0) -> Samples:
    """Scrape until `check(samples)` holds (a turn is recorded just after its last event)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        samples = web_metrics(stack)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        time.sleep(0.2)


def deltas(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.mark.django_db(transaction=True)
def test_metrics_count_real_turns_and_sum_every_process_of_the_machine(
    text_stack: Stack, fake: DashScopeServer
) -> None:
    stack = text_stack
    fake.behaviour.first_token_delay = FIRST_TOKEN_DELAY_S
    before = web_metrics(stack)
    worker_before = scrape(f"http://127.0.0.1:{stack.worker_port}/metrics")
    seen: dict[str, Any] = {}

    async def body() -> None:
        voice = await open_session(stack.port, "?mode=voice")
        seen["voice_id"] = voice.init["session_id"]
        seen["open"] = await asyncio.to_thread(web_metrics, stack)
        seen["text"] = await text_turn(voice, "hello there")
        seen["upload"] = await upload_turn(voice)
        fake.behaviour.llm_fault = Fault("http", 400, "InvalidParameter", "refused")
        await voice.send(type="text_message", text="this one fails")
        seen["error"] = await voice.until("error", timeout=30)
        fake.behaviour.llm_fault = None
        video = await open_session(stack.port, "?mode=video")
        seen["video"] = await text_turn(video, "show me")
        await video.until("video_ready", timeout=120)
        # a second web process on the same machine (the same metrics directory)
        other, other_port = start_daphne(stack.log_dir, stack.env, name="daphne-ops-other")
        try:
            elsewhere = await open_session(other_port, "?mode=video")
            seen["two"] = await asyncio.to_thread(web_metrics, stack)
            other.signal(signal.SIGKILL)  # dies without a word: its sessions stop counting
            await asyncio.to_thread(other.popen.wait, 10)  # reaped, as its supervisor would
            seen["killed"] = await asyncio.to_thread(
                until_metric,
                stack,
                lambda s: (
                    deltas(s, before, "echo_sessions_open", mode="video", transport="websocket")
                    == 1
                ),
                "the killed process's session no longer counted",
            )
            await elsewhere.ws.close()
        finally:
            other.stop()
        for client in (voice, video):
            await client.send(type="stop_session")
            await client.until("session_ended")
            await client.ws.close()

    run(body(), timeout=240)
    assert seen["error"]["code"] == "ERR_LLM_FAILED"

    def open_(samples: Samples, mode: str) -> float:
        return deltas(samples, before, "echo_sessions_open", mode=mode, transport="websocket")

    assert open_(seen["open"], "voice") == 1
    # the session on the other web process counts in this one's /metrics, until it is killed
    assert open_(seen["two"], "video") == 2 and open_(seen["killed"], "video") == 1
    after = until_metric(
        stack,
        lambda s: open_(s, "voice") == 0 and open_(s, "video") == 0,
        "every session closed",
    )
    assert deltas(after, before, "echo_sessions_total", mode="voice") == 1
    assert deltas(after, before, "echo_sessions_total", mode="video") == 2

    def turns(kind: str, outcome: str) -> float:
        return deltas(after, before, "echo_turns_total", kind=kind, outcome=outcome)

    # the upload turn ran in the worker's pool processes, the others in the web process
    assert turns("text", "ok") == 2 and turns("upload", "ok") == 1 and turns("text", "error") == 1
    assert deltas(after, before, "echo_provider_errors_total", code="ERR_LLM_FAILED") == 1

    def stage(name: str, kind: str, suffix: str = "count", **labels: str) -> float:
        return deltas(
            after, before, f"echo_stage_seconds_{suffix}", stage=name, kind=kind, **labels
        )

    assert stage("asr", "upload") == 1 and stage("queue_wait", "upload") == 1
    assert stage("llm_first_token", "text") == 2 and stage("llm_first_token", "upload") == 1
    assert stage("tts_first_audio", "text") == 2 and stage("tts_first_audio", "upload") == 1
    assert stage("queue_wait", "render") == 1
    # the first token came after the provider's delay: no turn in the buckets below it
    assert stage("llm_first_token", "text", "bucket", le="0.3") == 0
    assert stage("llm_first_token", "text", "bucket", le="+Inf") == 2
    assert stage("llm_first_token", "text", "sum") >= 2 * FIRST_TOKEN_DELAY_S
    # TTS's own time to first audio: the slow LLM before it is not counted against it
    assert stage("tts_first_audio", "text", "sum") < stage("llm_first_token", "text", "sum")
    assert deltas(after, before, "echo_render_realtime_factor_count") == 1
    assert deltas(after, before, "echo_render_realtime_factor_sum") > 0

    # the worker's own endpoint serves the same machine-wide sums
    worker_after = scrape(f"http://127.0.0.1:{stack.worker_port}/metrics")
    for kind, outcome in (("upload", "ok"), ("text", "ok"), ("text", "error")):
        assert deltas(
            worker_after, worker_before, "echo_turns_total", kind=kind, outcome=outcome
        ) == (turns(kind, outcome))

    # one line per turn, the same ids in the web process and in the worker
    web_log = stack.web.log_path.read_text(errors="replace")
    worker_log = stack.worker.log_path.read_text(errors="replace")
    session_id = seen["voice_id"]
    text_turn_id, upload_turn_id = seen["text"]["reply_to"], seen["upload"]["message_id"]
    [line] = _lines(web_log, rf"chat\.turns: turn {text_turn_id} text ok ")
    assert "llm_first_ms=" in line and "tts_first_ms=" in line
    assert line.endswith(f"[session={session_id} turn={text_turn_id}]")
    [sent] = _lines(web_log, rf"upload turn {upload_turn_id} sent to the speech workers")
    assert sent.endswith(f"[session={session_id} turn={upload_turn_id}]")
    [done] = _lines(worker_log, rf"chat\.turns: turn {upload_turn_id} upload ok ")
    for stage_key in ("queue_ms=", "asr_ms=", "llm_first_ms=", "tts_first_ms="):
        assert stage_key in done
    assert done.endswith(f"[session={session_id} turn={upload_turn_id}]")
    [failed] = _lines(web_log, r"chat\.turns: turn \d+ text error error=ERR_LLM_FAILED")
    assert f"[session={session_id} " in failed


def _lines(log: str, pattern: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(pattern, line)]


@pytest.mark.django_db(transaction=True)
def test_turn_lines_are_json_objects_with_the_same_ids_in_web_and_worker(
    json_stack: Stack, fake: DashScopeServer
) -> None:
    stack = json_stack
    seen: dict[str, Any] = {}

    async def body() -> None:
        client = await open_session(stack.port, "?mode=voice")
        seen["session_id"] = client.init["session_id"]
        seen["text"] = await text_turn(client, "hello there")
        seen["upload"] = await upload_turn(client)
        await client.send(type="stop_session")
        await client.until("session_ended")
        await client.ws.close()

    run(body(), timeout=120)
    session_id = seen["session_id"]
    text_id, upload_id = str(seen["text"]["reply_to"]), str(seen["upload"]["message_id"])

    def records(proc: Proc) -> list[dict[str, Any]]:
        found = []
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def turn_line(proc: Proc, turn_id: str) -> list[dict[str, Any]]:
        return [
            r for r in records(proc) if r["logger"] == "chat.turns" and r.get("turn_id") == turn_id
        ]

    # a turn's line is written once its last step is over, just after the client hears so
    until(lambda: turn_line(stack.web, text_id), "the text turn's line")
    until(lambda: turn_line(stack.worker, upload_id), "the upload turn's line")
    web, worker = records(stack.web), records(stack.worker)
    [text] = [r for r in web if r["logger"] == "chat.turns" and r.get("turn_id") == text_id]
    assert text["session_id"] == session_id and text["kind"] == "text"
    assert text["outcome"] == "ok" and text["level"] == "INFO"
    assert text["stages"]["llm_first_ms"] > 0 and text["stages"]["tts_first_ms"] > 0
    [sent] = [r for r in web if r.get("turn_id") == upload_id]
    assert sent["session_id"] == session_id and "sent to the speech workers" in sent["message"]
    [upload] = [r for r in worker if r["logger"] == "chat.turns" and r.get("turn_id") == upload_id]
    assert upload["session_id"] == session_id and upload["outcome"] == "ok"
    assert upload["kind"] == "upload"
    assert {"queue_ms", "asr_ms", "llm_first_ms", "tts_first_chunk_ms"} <= set(upload["stages"])
    assert all(isinstance(v, int | float) for v in upload["stages"].values())


def test_metrics_ask_for_the_token_when_one_is_set(client: Any, settings: Any) -> None:
    from echoproject import metrics

    metrics.session_opened("voice")  # something to export
    metrics.session_closed("voice", "websocket")
    settings.METRICS_TOKEN = "metrics-token-for-tests"
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401
    right = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-for-tests")
    assert right.status_code == 200
    names = {f.name for f in text_string_to_metric_families(right.content.decode())}
    assert {"echo_sessions_open", "echo_sessions"} <= names


@pytest.mark.django_db(transaction=True)
def test_webrtc_sessions_and_realtime_turns_are_counted(
    text_stack: Stack, fake: DashScopeServer
) -> None:
    """A session whose audio moves to a WebRTC peer counts under transport `webrtc` while the
    peer is connected, and its spoken turn as `realtime`, with the recognition's time."""
    stack = text_stack
    before = web_metrics(stack)
    seen: dict[str, Any] = {}

    def open_(samples: Samples, transport: str) -> float:
        return deltas(samples, before, "echo_sessions_open", mode="voice", transport=transport)

    async def body() -> None:
        client = await open_session(stack.port, "?mode=voice")
        peer = ClientPeer()
        try:
            await client.send(type="offer", sdp=await peer.offer(), sdp_type="offer", id="o1")
            answer = await client.until("answer", fail_on_error=True)
            await peer.accept(answer["sdp"])
            await client.until("connected", fail_on_error=True)
            seen["connected"] = await asyncio.to_thread(web_metrics, stack)
            await client.send(type="ready", direction="both", id="r1")
            await client.until("ready", fail_on_error=True)
            await client.send(type="asr_start", language="en-US", id="a1")
            peer.mic.play_wav(speak("hello there, how are you today"))
            seen["asr"] = await client.until("asr_result", timeout=60, fail_on_error=True)
            start = await client.until("tts_start", timeout=30, fail_on_error=True)
            assert start["transport"] == "webrtc"
            await client.until("tts_complete", timeout=60, fail_on_error=True)
        finally:
            await peer.close()  # the peer goes away: the session's audio is back on the socket
        seen["lost"] = await client.until("error", timeout=60)
        seen["after_peer"] = await asyncio.to_thread(
            until_metric, stack, lambda s: open_(s, "webrtc") == 0, "the peer gone"
        )
        await client.ws.close()

    run(body(), timeout=180)
    assert open_(seen["connected"], "webrtc") == 1 and open_(seen["connected"], "websocket") == 0
    assert seen["lost"]["code"] == "ERR_WEBRTC_FAILED"
    assert open_(seen["after_peer"], "websocket") == 1  # the socket is still open then
    after = until_metric(
        stack,
        lambda s: open_(s, "websocket") == 0 and open_(s, "webrtc") == 0,
        "the session closed",
    )
    connections = {
        outcome: deltas(after, before, "echo_webrtc_connections_total", outcome=outcome)
        for outcome in ("connected", "failed", "lost")
    }
    assert connections == {"connected": 1, "failed": 0, "lost": 1}
    assert deltas(after, before, "echo_turns_total", kind="realtime", outcome="ok") == 1
    assert deltas(after, before, "echo_stage_seconds_count", stage="asr", kind="realtime") == 1
    assert (
        deltas(after, before, "echo_stage_seconds_count", stage="tts_first_audio", kind="realtime")
        == 1
    )


def test_speech_running_dry_mid_reply_counts_as_an_underrun() -> None:
    """Silence between two pieces of a reply is an underrun; the silence after its end, while
    held (the user may be talking) or after a barge-in is not."""
    from prometheus_client import REGISTRY

    from chat.realtime.speaker import FRAME_BYTES, SAMPLE_RATE, SpeakerTrack

    def counted() -> float:
        return REGISTRY.get_sample_value("echo_audio_underruns_total") or 0.0

    async def frames(track: SpeakerTrack, count: int) -> None:
        for _ in range(count):
            await track.recv()

    async def body() -> list[int]:
        track, seen = SpeakerTrack(), []
        piece = bytes(3 * FRAME_BYTES)  # 60 ms of speech
        await track.write(piece, SAMPLE_RATE)
        await frames(track, 5)  # 3 speech frames, then silence: the next piece is late
        seen.append(track.underruns)
        await track.write(piece, SAMPLE_RATE)
        track.hold(True)
        await frames(track, 2)  # held: silence on purpose
        track.hold(False)
        await frames(track, 3)
        track.end_of_speech()  # the reply wrote its last audio
        await frames(track, 3)
        seen.append(track.underruns)
        await track.write(piece, SAMPLE_RATE)
        await frames(track, 1)
        track.clear()  # barge-in
        await frames(track, 2)
        seen.append(track.underruns)
        track.stop()
        return seen

    before = counted()
    assert run(body()) == [1, 1, 1]
    assert counted() - before == 1


@pytest.mark.django_db(transaction=True)
def test_flower_exports_the_workers_tasks_for_the_same_scrape(
    text_stack: Stack, fake: DashScopeServer
) -> None:
    """The `flower` job of deploy/prometheus: Flower's own /metrics, Celery's view of the
    turn's tasks, beside the service's."""
    stack = text_stack
    port = free_port()
    flower = Proc(
        "flower-ops",
        [
            str(BIN / "celery"),
            "-A",
            "celery_app",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
        ],
        stack.env,
        stack.log_dir,
    )
    try:
        flower.wait_until(lambda: port_open(port), what="listening")
        url = f"http://127.0.0.1:{port}/metrics"
        worker = stack.worker.nodename  # type: ignore[attr-defined]
        until(lambda: value(scrape(url), "flower_worker_online", worker=worker) == 1, "online")

        async def body() -> dict[str, Any]:
            client = await open_session(stack.port, "?mode=voice")
            asr = await upload_turn(client)
            await client.ws.close()
            return asr

        run(body(), timeout=120)

        def succeeded(samples: Samples) -> float:
            return value(
                samples,
                "flower_events_total",
                task="chat.tasks.upload_turn",
                type="task-succeeded",
                worker=worker,
            )

        def all_succeeded() -> Samples | None:
            samples = scrape(url)
            return samples if succeeded(samples) else None

        samples = until(all_succeeded, "the turn's task")
        assert succeeded(samples) == 1
        assert (
            value(
                samples,
                "flower_task_runtime_seconds_count",
                task="chat.tasks.upload_turn",
                worker=worker,
            )
            == 1
        )
    finally:
        flower.stop()


def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        time.sleep(0.3)
    return result
