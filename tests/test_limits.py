"""Limits that protect the bill, from the outside: real daphnes sharing Redis, real WebSockets
and uploads, a real Celery worker; the counters seen through `manage.py limits`."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from django.core.management import call_command

from tests.audio import speak
from tests.exported import sample_value
from tests.fixtures_sessions import Client, daphne_with, run
from tests.test_access import login

pytestmark = pytest.mark.usefixtures("live_avatars")
HERE = "ip:127.0.0.1"


def counters(subject: str = HERE) -> dict[str, dict[str, Any]]:
    out = io.StringIO()
    call_command("limits", "--json", "--subject", subject, stdout=out)
    return {row["limit"]: row for row in json.loads(out.getvalue())}


def refusals(ws_url: str, limit: str) -> float:
    """echo_limit_refusals_total{limit} as the web process at `ws_url` exports it."""
    base = ws_url.replace("ws://", "http://").split("/ws/")[0]
    text = httpx.get(f"{base}/metrics", timeout=15).text
    return sample_value(text, "echo_limit_refusals_total", limit=limit)


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    call_command("limits", "--reset", HERE, stdout=io.StringIO())
    yield


def away_from_window_edge(window_s: int) -> None:
    """Start a test well inside a window of the fixed-window counters (same clock as daphne), so
    that no window rolls over between the turns it counts."""
    while time.time() % window_s > window_s - 15:
        time.sleep(0.5)


@pytest.fixture(scope="module")
def twin(django_db_setup: None, log_dir: Path) -> Iterator[list[str]]:
    """Two web processes with the same session and turn limits."""
    settings = {"LIMIT_SESSIONS": "2", "LIMIT_TURNS_PER_MINUTE": "3"}
    procs = [daphne_with(log_dir, f"daphne-limits-{i}", **settings) for i in (1, 2)]
    yield [f"ws://127.0.0.1:{port}/ws/chat/" for _, port in procs]
    for proc, _ in procs:
        proc.stop()


@pytest.fixture(scope="module")
def spend(django_db_setup: None, log_dir: Path) -> Iterator[str]:
    """A web process with small daily limits of audio and reply characters."""
    proc, port = daphne_with(
        log_dir, "daphne-limits-spend", LIMIT_REPLY_CHARS_PER_DAY="40", LIMIT_AUDIO_S_PER_DAY="1"
    )
    yield f"127.0.0.1:{port}"
    proc.stop()


async def opened(url: str) -> tuple[Any, dict[str, Any]]:
    ws = await websockets.connect(url, max_size=None)
    return ws, json.loads(await ws.recv())


async def refused_by_limit(url: str) -> tuple[dict[str, Any], int | None]:
    async with websockets.connect(url) as ws:
        event = json.loads(await ws.recv())
        try:
            await ws.recv()
        except websockets.ConnectionClosed as closed:
            return event, closed.rcvd.code if closed.rcvd else None
    raise AssertionError("the connection stayed open")


def test_concurrent_sessions_are_limited_across_web_processes(twin: list[str]) -> None:
    refused_before = refusals(twin[0], "sessions")

    async def body() -> None:
        first, init1 = await opened(twin[0] + "?mode=voice")
        second, init2 = await opened(twin[1] + "?mode=voice")
        assert init1["type"] == init2["type"] == "init"
        assert counters()["sessions"]["used"] == 2
        for url in twin:  # the third of this address, on either process
            event, code = await refused_by_limit(url + "?mode=voice")
            assert event["code"] == "ERR_RATE_LIMITED" and event["limit"] == "sessions"
            assert event["retryable"] is True and 1 <= event["retry_after"] <= 60
            assert code == 4429
        await first.send(json.dumps({"type": "stop_session"}))
        await first.recv()
        await first.close()
        third, init3 = await opened(twin[1] + "?mode=voice")  # a place is free again
        assert init3["type"] == "init"
        await second.close()
        await third.close()

    run(body(), timeout=60)
    # operators see the refusals in the metrics of either process (the machine's sum)
    assert refusals(twin[1], "sessions") - refused_before == 2


def test_each_logged_in_user_has_limits_of_their_own(twin: list[str]) -> None:
    from django.contrib.auth import get_user_model

    users = [get_user_model().objects.create_user(n, password="pw-12345678") for n in "ab"]
    base = twin[0].replace("ws://", "http://").removesuffix("/ws/chat/")
    tickets = []
    for user in users:
        browser = login(base, user.username, "pw-12345678")
        tickets += [browser.post("/api/tickets", json={}).json()["ticket"] for _ in range(3)]
        browser.close()

    async def body() -> None:
        sockets = []
        for i, value in enumerate(tickets):
            url = f"{twin[i % 2]}?ticket={value}"
            if i % 3 == 2:  # each user's third
                event, code = await refused_by_limit(url)
                assert event["limit"] == "sessions" and code == 4429
            else:
                ws, init = await opened(url)
                assert init["type"] == "init"
                sockets.append(ws)
        # each user's sessions counted on their own, none on the address they share
        for user in users:
            assert counters(f"user:{user.pk}")["sessions"]["used"] == 2
        assert "sessions" not in counters(HERE)
        for ws in sockets:
            await ws.close()

    run(body(), timeout=60)


def test_turns_per_minute_are_limited_until_reset(twin: list[str]) -> None:
    away_from_window_edge(60)
    refused_before = refusals(twin[0], "turns_per_minute")

    async def body() -> list[dict[str, Any]]:
        ws, _ = await opened(twin[0] + "?mode=voice")
        other, _ = await opened(twin[1] + "?mode=voice")
        client, client2 = Client(ws), Client(other)
        results = [await turn(client, 1), await turn(client2, 2), await turn(client, 3)]
        results.append(await turn(client2, 4))  # the fourth in this minute, other process
        used = counters()["turns_per_minute"]
        assert used["used"] == 3 and 1 <= used["resets_in_s"] <= 60
        call_command("limits", "--reset", HERE, stdout=io.StringIO())
        results.append(await turn(client, 5))  # the operator let this address go on
        await ws.close()
        await other.close()
        return results

    results = run(body(), timeout=90)
    assert [r["type"] for r in results] == [
        "text_response",
        "text_response",
        "text_response",
        "error",
        "text_response",
    ]
    refusal = results[3]
    assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["ref"] == "t4"
    assert refusal["limit"] == "turns_per_minute" and 1 <= refusal["retry_after"] <= 60
    assert refusals(twin[0], "turns_per_minute") - refused_before == 1


async def turn(client: Client, i: int) -> dict[str, Any]:
    """A text turn: its reply, or the error that refused it."""
    await client.send(type="text_message", text=f"hello number {i}", id=f"t{i}")
    while True:
        event = await client.recv(timeout=30)
        if event["type"] == "error" or (
            event["type"] == "text_response" and event.get("ref") == f"t{i}"
        ):
            return event


def test_a_logged_in_users_turns_count_against_the_user_not_the_address(
    twin: list[str],
) -> None:
    from django.contrib.auth import get_user_model

    away_from_window_edge(60)
    user = get_user_model().objects.create_user("turner", password="pw-12345678")
    call_command("limits", "--reset", f"user:{user.pk}", stdout=io.StringIO())
    base = twin[0].replace("ws://", "http://").removesuffix("/ws/chat/")
    browser = login(base, user.username, "pw-12345678")
    ticket = browser.post("/api/tickets", json={}).json()["ticket"]
    browser.close()

    async def body() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        mine, _ = await opened(f"{twin[0]}?ticket={ticket}")
        anonymous, _ = await opened(twin[1] + "?mode=voice")  # the same address, no user
        user_client, anonymous_client = Client(mine), Client(anonymous)
        users = [await turn(user_client, i) for i in range(4)]
        anonymous_turns = [await turn(anonymous_client, i) for i in range(10, 13)]
        await mine.close()
        await anonymous.close()
        return users, anonymous_turns

    users, anonymous_turns = run(body(), timeout=90)
    assert [e["type"] for e in users] == ["text_response"] * 3 + ["error"]
    assert users[3]["code"] == "ERR_RATE_LIMITED" and users[3]["limit"] == "turns_per_minute"
    # the user's limit used up did not touch the address's, nor the other way round
    assert [e["type"] for e in anonymous_turns] == ["text_response"] * 3
    assert counters(f"user:{user.pk}")["turns_per_minute"]["used"] == 3
    assert counters()["turns_per_minute"]["used"] == 3


def test_reply_characters_per_day_stop_further_turns(spend: str) -> None:
    away_from_window_edge(86400)

    async def body() -> list[dict[str, Any]]:
        ws, _ = await opened(f"ws://{spend}/ws/chat/?mode=voice")
        client = Client(ws)
        await client.send(type="text_message", text="tell me about the weather", id="a")
        reply = await client.until("text_response", fail_on_error=True)
        assert len(reply["text"]) > 40
        await client.until("tts_complete", fail_on_error=True)  # the reply is over
        await client.send(type="text_message", text="and tomorrow?", id="b")
        refusal = await client.until("error")
        await ws.close()
        return [reply, refusal]

    reply, refusal = run(body(), timeout=60)
    assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["limit"] == "reply_chars_per_day"
    assert refusal["ref"] == "b" and refusal["retryable"] is True
    assert 1 <= refusal["retry_after"] <= 86400
    assert counters()["reply_chars_per_day"]["used"] == len(reply["text"])


def test_a_logged_in_users_reply_characters_count_against_the_user(spend: str) -> None:
    """Reply characters are counted where the reply ends, from the session's row: its user."""
    from django.contrib.auth import get_user_model

    away_from_window_edge(86400)
    user = get_user_model().objects.create_user("talker", password="pw-12345678")
    call_command("limits", "--reset", f"user:{user.pk}", stdout=io.StringIO())
    browser = login(f"http://{spend}", user.username, "pw-12345678")
    ticket = browser.post("/api/tickets", json={}).json()["ticket"]
    browser.close()

    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        ws, _ = await opened(f"ws://{spend}/ws/chat/?ticket={ticket}")
        client = Client(ws)
        await client.send(type="text_message", text="tell me about the weather", id="a")
        reply = await client.until("text_response", fail_on_error=True)
        await client.until("tts_complete", fail_on_error=True)
        await client.send(type="text_message", text="and tomorrow?", id="b")
        refusal = await client.until("error")
        await ws.close()
        return reply, refusal

    reply, refusal = run(body(), timeout=60)
    assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["limit"] == "reply_chars_per_day"
    assert counters(f"user:{user.pk}")["reply_chars_per_day"]["used"] == len(reply["text"])
    assert "reply_chars_per_day" not in counters()  # nothing on the address


@pytest.mark.usefixtures("celery_worker")
def test_audio_seconds_per_day_refuse_uploads_with_retry_after(spend: str) -> None:
    away_from_window_edge(86400)
    audio = speak("good morning to you").read_bytes()  # about 1.5 s

    async def body() -> tuple[httpx.Response, httpx.Response, dict[str, Any]]:
        ws, init = await opened(f"ws://{spend}/ws/chat/?mode=voice")
        client = Client(ws)
        upload = f"http://{spend}/api/sessions/{init['session_id']}/audio"
        auth = {"Authorization": f"Bearer {init['session_token']}"}
        async with httpx.AsyncClient(timeout=30) as http:
            first = await http.post(upload, content=audio, headers=auth)
            second = await http.post(upload, content=audio, headers=auth)
        await ws.send(audio)  # the same utterance as a binary frame
        refusal = await client.until("error")
        await ws.close()
        return first, second, refusal

    first, second, refusal = run(body(), timeout=60)
    assert first.status_code == 202
    assert second.status_code == 429
    error = second.json()["error"]
    assert error["code"] == "ERR_RATE_LIMITED" and error["limit"] == "audio_s_per_day"
    assert int(second.headers["Retry-After"]) == error["retry_after"] > 0
    assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["limit"] == "audio_s_per_day"
    assert 1.0 < counters()["audio_s_per_day"]["used"] < 3.0


def two_video_turns(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A video turn to its `video_ready`, then a second one: the first's `video_ready` and
    the error answering the second."""

    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        ws, _ = await opened(url)
        client = Client(ws)
        await client.send(type="text_message", text="hello", id="v1")
        ready = await client.until("video_ready", timeout=120, fail_on_error=True)
        await client.send(type="text_message", text="once more", id="v2")
        refusal = await client.until("error")
        await ws.close()
        return ready, refusal

    return run(body(), timeout=150)


@pytest.mark.usefixtures("celery_worker")
def test_video_seconds_per_day_stop_video_turns(log_dir: Path) -> None:
    away_from_window_edge(86400)
    proc, port = daphne_with(log_dir, "daphne-limits-video", LIMIT_VIDEO_S_PER_DAY="1")
    try:
        ready, refusal = two_video_turns(f"ws://127.0.0.1:{port}/ws/chat/?mode=video")
    finally:
        proc.stop()
    assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["limit"] == "video_s_per_day"
    used = counters()["video_s_per_day"]["used"]
    assert abs(used - ready["duration_ms"] / 1000) < 0.1


def ticket_of(base: str, username: str, mode: str = "voice") -> tuple[int, str]:
    """A new user's id (their counters emptied) and a session ticket they got logged in."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username, password="pw-12345678")
    call_command("limits", "--reset", f"user:{user.pk}", stdout=io.StringIO())
    browser = login(base, username, "pw-12345678")
    ticket = browser.post("/api/tickets", json={"mode": mode}).json()["ticket"]
    browser.close()
    return user.pk, ticket


@pytest.mark.usefixtures("celery_worker")
def test_a_logged_in_users_audio_seconds_count_against_the_user_not_the_address(
    spend: str,
) -> None:
    away_from_window_edge(86400)
    user_id, ticket = ticket_of(f"http://{spend}", "speaker")
    audio = speak("good morning to you").read_bytes()  # about 1.5 s

    async def upload(http: httpx.AsyncClient, init: dict[str, Any]) -> httpx.Response:
        return await http.post(
            f"http://{spend}/api/sessions/{init['session_id']}/audio",
            content=audio,
            headers={"Authorization": f"Bearer {init['session_token']}"},
        )

    async def body() -> tuple[list[httpx.Response], dict[str, Any], httpx.Response]:
        mine, init = await opened(f"ws://{spend}/ws/chat/?ticket={ticket}")
        async with httpx.AsyncClient(timeout=30) as http:
            users = [await upload(http, init), await upload(http, init)]
            await mine.send(audio)  # the same utterance as a binary frame
            refusal = await Client(mine).until("error")
            # the address the user spoke from has all of its own allowance left
            anonymous, anonymous_init = await opened(f"ws://{spend}/ws/chat/?mode=voice")
            assert "audio_s_per_day" not in counters()
            anonymous_upload = await upload(http, anonymous_init)
        await mine.close()
        await anonymous.close()
        return users, refusal, anonymous_upload

    users, refusal, anonymous_upload = run(body(), timeout=90)
    assert [r.status_code for r in users] == [202, 429]
    assert users[1].json()["error"]["limit"] == "audio_s_per_day"
    assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["limit"] == "audio_s_per_day"
    assert 1.0 < counters(f"user:{user_id}")["audio_s_per_day"]["used"] < 3.0
    assert anonymous_upload.status_code == 202


@pytest.mark.usefixtures("celery_worker")
def test_a_logged_in_users_video_seconds_count_against_the_user_not_the_address(
    log_dir: Path,
) -> None:
    away_from_window_edge(86400)
    proc, port = daphne_with(log_dir, "daphne-limits-user-video", LIMIT_VIDEO_S_PER_DAY="1")
    try:
        user_id, ticket = ticket_of(f"http://127.0.0.1:{port}", "watcher", mode="video")
        ready, refusal = two_video_turns(
            f"ws://127.0.0.1:{port}/ws/chat/?ticket={ticket}&mode=video"
        )
    finally:
        proc.stop()
    assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["limit"] == "video_s_per_day"
    assert refusal["ref"] == "v2"
    used = counters(f"user:{user_id}")["video_s_per_day"]["used"]
    assert abs(used - ready["duration_ms"] / 1000) < 0.1
    assert "video_s_per_day" not in counters()  # nothing on the address


def audio_counted_beyond(seconds: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while counters().get("audio_s_per_day", {}).get("used", 0) < seconds:
        assert time.monotonic() < deadline, "the span's audio was not counted"
        time.sleep(0.1)


def test_streamed_audio_counts_and_a_new_span_is_refused_past_the_limit(spend: str) -> None:
    away_from_window_edge(86400)
    from tests.audio import read_wav, resample

    pcm, rate = read_wav(speak("good morning to you, how are you today"))
    pcm16k = resample(pcm, rate, 16000).astype("<i2").tobytes()

    async def body() -> dict[str, Any]:
        ws, _ = await opened(f"ws://{spend}/ws/chat/?mode=voice")
        client = Client(ws)
        await client.send(
            type="asr_start", transport="websocket", format="pcm16", sample_rate=16000, id="s1"
        )
        for start in range(0, len(pcm16k), 3200):  # 100 ms chunks
            await ws.send(pcm16k[start : start + 3200])
        await client.send(type="asr_stop", id="s1-stop")
        await client.until("asr_result", timeout=30)
        await asyncio.to_thread(audio_counted_beyond, 1.0)  # counted when the span is over
        await client.send(
            type="asr_start", transport="websocket", format="pcm16", sample_rate=16000, id="s2"
        )
        refusal = await client.until("error")
        await ws.close()
        return refusal

    refusal = run(body(), timeout=60)
    assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["limit"] == "audio_s_per_day"
    assert refusal["ref"] == "s2"
    seconds = len(pcm16k) / 32000
    assert abs(counters()["audio_s_per_day"]["used"] - seconds) < 0.2


def test_behind_a_proxy_each_forwarded_address_has_its_own_limits(log_dir: Path) -> None:
    proc, port = daphne_with(
        log_dir, "daphne-limits-proxy", LIMIT_SESSIONS="1", TRUST_PROXY_HEADERS="true"
    )
    url = f"ws://127.0.0.1:{port}/ws/chat/?mode=voice"

    def via(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": address}

    async def body() -> None:
        first = await websockets.connect(url, additional_headers=via("203.0.113.7"))
        second = await websockets.connect(url, additional_headers=via("198.51.100.20"))
        for ws in (first, second):
            assert json.loads(await ws.recv())["type"] == "init"
        async with websockets.connect(url, additional_headers=via("203.0.113.7")) as third:
            refusal = json.loads(await third.recv())
            assert refusal["code"] == "ERR_RATE_LIMITED" and refusal["limit"] == "sessions"
        assert counters("ip:203.0.113.7")["sessions"]["used"] == 1
        assert counters("ip:198.51.100.20")["sessions"]["used"] == 1
        await first.close()
        await second.close()

    try:
        run(body(), timeout=60)
    finally:
        proc.stop()
    assert counters(HERE) == {}  # the proxy's own address counted nothing
