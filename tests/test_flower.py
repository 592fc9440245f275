"""Flower and the admin from the outside: Flower never listens beyond loopback without a login,
asks for it, shows tasks whose arguments are ids only; the admin can move off /admin/."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.audio import speak
from tests.fixtures_sessions import daphne_with, run
from tests.procs import ROOT, Proc, child_env, free_port, port_open

LOGIN = ("operator", "flower-pass-1")


def test_flower_refuses_to_listen_beyond_loopback_without_a_login() -> None:
    for host in ("0.0.0.0", "flower.example"):
        result = subprocess.run(
            [sys.executable, "-m", "echoproject.flower"],
            cwd=ROOT,
            env=child_env(HOST=host, FLOWER_PORT=str(free_port())),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        [line] = result.stderr.strip().splitlines()
        assert f"listen on {host} without a login" in line and "FLOWER_BASIC_AUTH" in line


def test_flower_takes_its_address_and_login_only_from_the_settings() -> None:
    """`--address=0.0.0.0` after the loopback address it was checked for would otherwise win."""
    for args, setting in (
        (["--address=0.0.0.0"], "HOST"),
        (["--address", "0.0.0.0"], "HOST"),
        (["--port=80"], "FLOWER_PORT"),
        (["--basic-auth=a:b"], "FLOWER_BASIC_AUTH"),
        (["--conf=/tmp/flowerconfig.py"], "the environment"),
    ):
        port = free_port()
        result = subprocess.run(
            [sys.executable, "-m", "echoproject.flower", *args],
            cwd=ROOT,
            env=child_env(HOST="127.0.0.1", FLOWER_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, args
        [line] = result.stderr.strip().splitlines()
        assert f"is set by {setting}, not on the command line" in line, line


@pytest.fixture(scope="module")
def flower(django_db_setup: None, log_dir: Path) -> Iterator[str]:
    """Flower on every address, with a basic-auth login; yields its URL on loopback."""
    port = free_port()
    proc = Proc(
        "flower",
        [sys.executable, "-m", "echoproject.flower"],
        child_env(HOST="0.0.0.0", FLOWER_PORT=str(port), FLOWER_BASIC_AUTH=":".join(LOGIN)),
        log_dir,
    )
    proc.wait_until(lambda: port_open(port), what="listening")
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def test_flower_asks_for_its_login(flower: str) -> None:
    assert httpx.get(f"{flower}/").status_code == 401
    assert httpx.get(f"{flower}/api/tasks").status_code == 401
    assert httpx.get(f"{flower}/", auth=("operator", "wrong-password")).status_code == 401
    assert httpx.get(f"{flower}/", auth=LOGIN).status_code == 200


@pytest.mark.usefixtures("live_avatars", "celery_worker")
def test_task_arguments_flower_shows_are_ids_only(
    flower: str, connect: Any, chat_server: str
) -> None:
    utterance = "what is the weather like in paris"
    ref = "my trip to lyon"  # a client's `id` is any short string: it may be the user's words

    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect("?mode=voice") as client:
            init = await client.recv()
            base = chat_server.replace("ws://", "http://")
            async with httpx.AsyncClient(timeout=30) as http:
                sent = await http.post(
                    f"{base}/api/sessions/{init['session_id']}/audio",
                    params={"id": ref},
                    content=speak(utterance).read_bytes(),
                    headers={"Authorization": f"Bearer {init['session_token']}"},
                )
            assert sent.status_code == 202, sent.text
            heard = await client.until("asr_result", timeout=60, fail_on_error=True)
            await client.until("tts_complete", timeout=60, fail_on_error=True)
            return init, heard

    init, heard = run(body(), timeout=90)
    assert heard["ref"] == ref  # the turn's events still carry the client's id
    deadline = time.monotonic() + 20
    tasks: dict[str, Any] = {}
    while time.monotonic() < deadline:  # Flower hears of tasks from the workers' events
        tasks = httpx.get(f"{flower}/api/tasks", auth=LOGIN).json()
        mine = [t for t in tasks.values() if init["session_id"] in (t.get("kwargs") or "")]
        if {t["name"] for t in mine} >= {"chat.tasks.upload_turn"}:
            break
        time.sleep(0.5)
    assert {t["name"] for t in mine} >= {"chat.tasks.upload_turn"}
    shown = json.dumps([[t["args"], t["kwargs"]] for t in mine])
    for word in ("weather", "paris", "lyon", "http", "sessions/", ".wav", init["session_token"]):
        assert word not in shown.lower(), (word, shown)


def flower_tasks(flower: str, task_ids: set[str]) -> dict[str, Any]:
    """The tasks `task_ids` as Flower's API shows them, once it heard of them all."""
    deadline = time.monotonic() + 20
    while True:  # Flower hears of tasks from the workers' events
        tasks = httpx.get(f"{flower}/api/tasks", auth=LOGIN).json()
        if task_ids <= tasks.keys() or time.monotonic() > deadline:
            return {task_id: tasks[task_id] for task_id in task_ids & tasks.keys()}
        time.sleep(0.5)


@pytest.mark.usefixtures("live_avatars", "celery_worker")
def test_render_task_arguments_flower_shows_are_ids_only(flower: str, connect: Any) -> None:
    async def body() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with connect("?mode=video") as client:
            init = await client.recv()
            await client.send(type="text_message", text="tell me about paris", id="in lyon")
            reply = await client.until("text_response", timeout=60, fail_on_error=True)
            queued = await client.until("video_queued", timeout=60, fail_on_error=True)
            await client.until("video_ready", timeout=120, fail_on_error=True)
            return init, reply, queued

    init, reply, queued = run(body(), timeout=200)
    tasks = flower_tasks(flower, {queued["task_id"]})
    assert [t["name"] for t in tasks.values()] == ["rendering.tasks.render_video"]
    shown = json.dumps([[t["args"], t["kwargs"]] for t in tasks.values()]).lower()
    assert str(queued["message_id"]) in shown  # the message's id, and nothing of its text
    for word in ("paris", "lyon", reply["text"][:12].lower(), "http", "sessions/", ".wav", ".mp4"):
        assert word not in shown, (word, shown)
    assert init["session_token"].lower() not in shown


def test_the_admin_moves_off_admin_when_told(log_dir: Path) -> None:
    proc, port = daphne_with(log_dir, "daphne-admin-url", ADMIN_URL="ops-7f3k")
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/admin/").status_code == 404
        moved = httpx.get(f"{base}/ops-7f3k/")
        assert moved.status_code == 302 and moved.headers["Location"].startswith("/ops-7f3k/login/")
        assert "Django" in httpx.get(f"{base}/ops-7f3k/login/").text
    finally:
        proc.stop()
