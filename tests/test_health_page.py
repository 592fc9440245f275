"""The admin's "Service health" page, after real turns (text, upload, video; a slow LLM, two
provider failures), as a staff user sees it in headless Chromium; and kept from everyone else."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import User
from websockets.sync.client import connect

from tests.fakes.dashscope_server import DashScopeServer, Fault
from tests.fixtures_browser import DESKTOP, SCREENSHOTS, BrowserSession
from tests.fixtures_operators import Stack, open_session, operator_stack, text_turn, upload_turn
from tests.fixtures_sessions import run
from tests.procs import ROOT, child_env

SLOW_LLM_S = 1.0
PASSWORD = "health-page-password-0123"


@pytest.fixture
def health_stack(
    django_db_setup: None, log_dir: Path, dashscope_server: DashScopeServer
) -> Iterator[Stack]:
    dashscope_server.reset()
    # the admin's stylesheets, collected as `make run` does (STATIC_ROOT is per test run)
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=child_env(),
        check=True,
        timeout=120,
    )
    yield from operator_stack(log_dir, "health-page", dashscope_server)
    dashscope_server.reset()


def _turns(stack: Stack, fake: DashScopeServer) -> dict[str, Any]:
    """Six turns in two sessions, both ended."""
    seen: dict[str, Any] = {}

    async def body() -> None:
        fake.behaviour.first_token_delay = SLOW_LLM_S
        voice = await open_session(stack.port, "?mode=voice")
        await text_turn(voice, "hello there")
        await text_turn(voice, "how are you")
        await upload_turn(voice)
        fake.behaviour.llm_fault = Fault("http", 400, "InvalidParameter", "refused")
        await voice.send(type="text_message", text="this one fails in the LLM")
        seen["llm_error"] = await voice.until("error", timeout=30)
        fake.behaviour.llm_fault = None
        fake.behaviour.tts_fault = Fault("task-failed", code="InvalidParameter")
        await voice.send(type="text_message", text="this one fails in the TTS")
        seen["tts_error"] = await voice.until("error", timeout=30)
        fake.behaviour.tts_fault = None
        await voice.send(type="stop_session")
        await voice.until("session_ended")
        await voice.ws.close()
        video = await open_session(stack.port, "?mode=video")
        await text_turn(video, "show me")
        await video.until("video_ready", timeout=120)
        await video.ws.close()

    run(body(), timeout=240)
    return seen


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_health_page_shows_the_days_turns_stages_errors_and_sessions(
    live_avatars: list,
    health_stack: Stack,
    dashscope_server: DashScopeServer,
    request: pytest.FixtureRequest,
) -> None:
    seen = _turns(health_stack, dashscope_server)
    assert seen["llm_error"]["code"] == "ERR_LLM_FAILED"
    assert seen["tts_error"]["code"] == "ERR_TTS_FAILED"
    User.objects.create_user("operator", password=PASSWORD, is_staff=True)
    url = f"http://127.0.0.1:{health_stack.port}"
    browser = BrowserSession(SimpleNamespace(url=url), request)
    failed = True
    with connect(f"ws://127.0.0.1:{health_stack.port}/ws/chat/?mode=voice") as still_open:
        try:
            assert json.loads(still_open.recv(timeout=20))["type"] == "init"
            browser.launch(None)
            page = browser.browser.new_page(viewport=DESKTOP)  # the admin only, not the client
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda e: browser.log.append(f"pageerror: {e}"))
            browser.pages.append(page)
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(f"{url}/admin/login/?next=/admin/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.click("#service-health-link a")  # from the admin's index
            page.wait_for_selector("figure[data-plot=sessions] svg")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "service-health.png"), full_page=True)

            assert page.locator("h1").inner_text() == "Service health"

            def summary(name: str) -> str:
                return page.locator(f"[data-summary={name}] strong").inner_text()

            assert summary("turns") == "6"
            assert summary("errors") == "2" and summary("interrupted") == "0"
            assert summary("sessions-open") == "1"  # the one still connected
            assert summary("renders") == "1"

            def cell(stage: str, column: int) -> str:
                return page.locator(f"#stages tr[data-stage={stage}] td").nth(column).inner_text()

            assert cell("asr_ms", 1) == "1" and cell("queue_ms", 1) == "1"  # the upload
            assert cell("llm_first_ms", 1) == "5"  # all but the turn whose LLM failed
            assert cell("tts_first_chunk_ms", 1) == "4"  # nor the one whose TTS failed
            assert cell("render_queue_ms", 1) == "1"  # the video
            # the slow stage stands out: the LLM's first token took longer than TTS's first audio
            llm_p50, tts_p50 = float(cell("llm_first_ms", 2)), float(cell("tts_first_chunk_ms", 2))
            assert llm_p50 >= SLOW_LLM_S * 1000 > tts_p50
            codes = {
                row.get_attribute("data-code"): row.locator("td").nth(1).inner_text()
                for row in page.locator("#error-codes tr[data-code]").all()
            }
            assert codes == {"ERR_LLM_FAILED": "1", "ERR_TTS_FAILED": "1"}

            plots = ["turns", "errors", "render", "sessions"] + [
                f"stage-{key}"
                for key in ("queue_ms", "asr_ms", "llm_first_ms", "tts_first_chunk_ms")
            ]
            for plot in plots:
                svg = page.locator(f"figure[data-plot={plot}] svg")
                box = svg.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 50, plot
                points = [
                    int(p.get_attribute("data-points"))
                    for p in svg.locator("path[data-series]").all()
                ]
                assert points and max(points) >= 1, plot
            errors = page.locator("figure[data-plot=errors] path[data-series]")
            assert sorted(p.get_attribute("data-series") for p in errors.all()) == [
                "ERR_LLM_FAILED",
                "ERR_TTS_FAILED",
            ]
            # nothing loaded from elsewhere: the plots are drawn by the server
            assert requested and all(u.startswith(url) for u in requested), [
                u for u in requested if not u.startswith(url)
            ]
            failed = False
        finally:
            browser.close(failed)
    assert not [line for line in browser.log if line.startswith("pageerror")], browser.log


@pytest.mark.django_db
def test_health_page_is_for_staff_only(client: Any) -> None:
    anonymous = client.get("/admin/health/")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    User.objects.create_user("visitor", password=PASSWORD)
    client.login(username="visitor", password=PASSWORD)
    visitor = client.get("/admin/health/")
    assert visitor.status_code == 302 and "/admin/login/" in visitor["Location"]
    User.objects.create_user("operator", password=PASSWORD, is_staff=True)
    client.login(username="operator", password=PASSWORD)
    staff = client.get("/admin/health/")
    assert staff.status_code == 200 and b"Service health" in staff.content


@pytest.mark.django_db
def test_a_stage_slower_in_the_last_hour_than_all_day_is_marked(client: Any) -> None:
    """Which stage got slow: LLM first tokens that took 2 s in the last hour after a day at
    0.3 s mark the LLM's row; ASR, steady all day, is not marked."""
    from datetime import timedelta

    from django.utils import timezone

    from chat.models import ChatSession, Message

    now = timezone.now()
    session = ChatSession.objects.create(mode="voice", started_at=now - timedelta(hours=20))
    for hours_ago, llm_ms in [(h, 300.0) for h in range(2, 20)] + [(0.5, 2000.0)] * 5:
        at = now - timedelta(hours=hours_ago)
        user = Message.objects.create(
            session=session, role="user", created_at=at, timings={"asr_ms": 400.0}
        )
        Message.objects.create(
            session=session,
            role="assistant",
            reply_to=user,
            created_at=at,
            timings={"llm_first_ms": llm_ms, "tts_first_chunk_ms": 50.0},
        )
    User.objects.create_user("operator", password=PASSWORD, is_staff=True)
    client.login(username="operator", password=PASSWORD)
    page = client.get("/admin/health/").content.decode()
    llm_row = re.search(r'<tr data-stage="llm_first_ms"([^>]*)>(.*?)</tr>', page, re.S)
    asr_row = re.search(r'<tr data-stage="asr_ms"([^>]*)>(.*?)</tr>', page, re.S)
    assert llm_row and asr_row
    assert 'class="slower"' in llm_row[1] and "slower than usual" in llm_row[2]
    assert "slower" not in asr_row[1] and "slower" not in asr_row[2]
    cells = re.findall(r"<td>([^<]*)</td>", llm_row[2])
    assert cells[1:] == ["23", "300.0", "2000.0", "2000.0"]
