"""In headless Chromium: the admin's "Preview voice" plays the avatar's greeting, an operator
clones a voice from a sample at the loopback DashScope and hears it, and the web client says
plainly when the offline recogniser cannot understand the avatar's language."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from django.contrib.auth import get_user_model

from avatars.models import Avatar
from tests.audio import CACHE, read_wav, speak, write_wav
from tests.fixtures_browser import MIC_RATE, BrowserSession, WebServer
from tests.fixtures_sessions import separate_stack
from tests.voice_samples import encode_sample

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery"


def connected(page: Any) -> None:
    page.wait_for_selector("#app[data-connection='connected']", timeout=20_000)


def log_in(page: Any, base: str) -> None:
    page.goto(base + "/admin/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")


def test_preview_voice_in_the_admin_plays_the_greeting(browser, live_avatars) -> None:
    # the database first: Playwright's sync API runs an event loop in this thread
    get_user_model().objects.create_superuser("boss", "boss@example.com", PASSWORD)
    aria = Avatar.objects.get(slug="aria")
    Avatar.objects.filter(pk=aria.pk).update(espeak_voice="en-us+f3", espeak_rate=150)
    session = browser()
    page = session.open()
    base = session.server.url
    log_in(page, base)
    page.goto(f"{base}/admin/avatars/avatar/{aria.pk}/change/")
    page.click("button.voice-preview")
    page.wait_for_function(
        """() => { const a = document.querySelector('audio.voice-preview-audio');
                   return a && !a.hidden && a.played.length > 0 && a.currentTime > 0; }""",
        timeout=60_000,
    )
    duration = "document.querySelector('audio.voice-preview-audio').duration"
    seconds = page.evaluate(duration)
    words = len(aria.greeting.split())
    assert seconds > words * 60 / 150 / 2  # the whole greeting, not a click
    assert page.inner_text(".voice-preview-status") == "Playing."
    session.screenshot(page, "admin-voice-preview")

    page.fill("#id_espeak_rate", "400")  # not saved: the preview speaks the form's choice
    page.click("button.voice-preview")
    page.wait_for_function(f"() => {duration} < {seconds * 0.7}", timeout=60_000)
    page.wait_for_function(
        "() => document.querySelector('audio.voice-preview-audio').currentTime > 0"
    )


def test_the_change_page_follows_an_enrolling_voice_until_it_settles(browser, live_avatars) -> None:
    import threading

    get_user_model().objects.create_superuser("boss", "boss@example.com", PASSWORD)
    aria = Avatar.objects.get(slug="aria")
    # set without signals: no enrolment task runs, the test plays the worker's part
    Avatar.objects.filter(pk=aria.pk).update(voice_sample="voices/me.wav", voice_state="enrolling")
    session = browser()
    page = session.open()
    log_in(page, session.server.url)
    page.goto(f"{session.server.url}/admin/avatars/avatar/{aria.pk}/change/")
    page.wait_for_selector(".voice-state[data-state='enrolling']")

    def settle() -> None:  # the ORM off Playwright's event-loop thread
        Avatar.objects.filter(pk=aria.pk).update(
            voice_state="ready",
            cloned_voice="cosyvoice-v2-aria-0a1b",
            cloned_voice_model="cosyvoice-v2",
        )

    worker = threading.Thread(target=settle)
    worker.start()
    worker.join()
    page.wait_for_selector(".voice-state[data-state='ready']", timeout=20_000)
    assert "cosyvoice-v2-aria-0a1b" in page.inner_text(".voice-state")


def test_preview_speaks_the_name_when_there_is_no_greeting(browser, live_avatars) -> None:
    get_user_model().objects.create_superuser("boss", "boss@example.com", PASSWORD)
    lin = Avatar.objects.get(slug="lin")
    Avatar.objects.filter(pk=lin.pk).update(greeting="")  # the name is spoken instead
    session = browser()
    page = session.open()
    base = session.server.url
    log_in(page, base)
    page.goto(f"{base}/admin/avatars/avatar/{lin.pk}/change/")
    assert "understands English only" in page.inner_text(".field-offline_recognition")
    page.click("button.voice-preview")
    page.wait_for_function(
        "() => document.querySelector('.voice-preview-status').textContent === 'Playing.'",
        timeout=60_000,
    )


def chinese_microphone() -> Any:
    pcm, _ = read_wav(speak("你好，今天天气怎么样？", voice="cmn", sample_rate=MIC_RATE))
    lead, tail = (np.zeros(int(s * MIC_RATE), np.int16) for s in (0.3, 4.0))
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"mic-chinese-{os.getpid()}.wav"
    write_wav(path, np.concatenate([lead, pcm, tail]), MIC_RATE)
    return path


def test_the_client_says_the_offline_recogniser_understands_english_only(browser) -> None:
    session = browser(chinese_microphone())
    page = session.open()
    connected(page)
    assert page.locator("#asr-notice").is_hidden()  # Aria speaks English

    page.click("#gallery .card[data-slug='lin']")
    page.wait_for_function(
        "() => document.querySelector('#avatar-name').textContent === 'Lin Xiao'"
    )
    connected(page)
    notice = page.locator("#asr-notice")
    notice.wait_for(state="visible")
    assert "understands English only" in notice.inner_text()
    assert "Chinese" in notice.inner_text()

    button = page.locator("#ptt-button")
    button.hover()
    page.mouse.down()
    page.wait_for_selector("#app[data-activity='recording']")
    page.wait_for_timeout(3000)
    page.mouse.up()
    page.wait_for_selector("li.msg.user[data-message-id][data-final='true']", timeout=60_000)
    said = page.locator("li.msg.user[data-message-id]").last
    assert "English guess" in said.inner_text()
    assert page.inner_text("#caption") == ""  # no English guess shown as the caption
    session.screenshot(page, "asr-english-only")

    page.click("#ui-lang")
    assert "只听得懂英语" in notice.inner_text()


def off_the_loop(query: Callable[[], Any]) -> Any:
    """The ORM from another thread: Playwright's sync API runs an event loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(query).result()


@pytest.fixture
def cloud_admin(
    web_client_server: WebServer, live_avatars: list, log_dir: Path, dashscope_server: Any
) -> Iterator[WebServer]:
    """A web process and a speech worker whose TTS and voice enrolment are the loopback
    DashScope, for an operator in Chromium (the static files are those web_client_server
    collected)."""
    dashscope_server.reset()
    dashscope_server.forget_voices()
    with separate_stack(
        log_dir,
        "voice-admin",
        DASHSCOPE_API_KEY=dashscope_server.api_key,
        DASHSCOPE_HTTP_BASE_URL=dashscope_server.http_base_url,
        DASHSCOPE_WEBSOCKET_BASE_URL=dashscope_server.websocket_url,
        TTS_BACKEND="dashscope",
        PUBLIC_BASE_URL="http://media.example.test",
        VOICE_POLL_S="0.5",
        PROVIDER_TIMEOUT_S="10",
    ) as ws_url:
        port = urlparse(ws_url).port
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}")  # what BrowserSession reads
    dashscope_server.reset()
    dashscope_server.forget_voices()


def test_an_operator_clones_a_voice_and_hears_it(
    cloud_admin: Any, dashscope_server: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Upload a bad sample (refused, with why), a good one (enrolling, then ready without a
    reload), preview the cloned voice, hear the preset with the reason once it is deleted at
    DashScope, then clear the sample: the voice is deleted at DashScope too."""
    get_user_model().objects.create_superuser("boss", "boss@example.com", PASSWORD)
    aria = Avatar.objects.get(slug="aria")
    dashscope_server.behaviour.voice_ready_after = 2.0
    short, good = tmp_path / "short.wav", tmp_path / "me.mp3"
    short.write_bytes(encode_sample(2))
    good.write_bytes(encode_sample(8, "mp3", "libmp3lame"))
    session, failed = BrowserSession(cloud_admin, request), True
    try:
        session.launch(None)
        page = session.browser.new_context().new_page()
        page.set_default_timeout(20_000)
        log_in(page, cloud_admin.url)
        change = f"{cloud_admin.url}/admin/avatars/avatar/{aria.pk}/change/"

        def save_sample(path: Path) -> None:
            page.goto(change)
            page.select_option("#id_voice_source", "cloned")
            page.set_input_files("#id_voice_sample", str(path))
            page.click("input[name=_continue]")
            page.wait_for_load_state()

        save_sample(short)
        assert "record at least 5 seconds" in page.inner_text(".field-voice_sample .errorlist")
        assert dashscope_server.of("voice") == []

        save_sample(good)
        assert "changed successfully" in page.inner_text(".messagelist")
        assert page.inner_text(".voice-state strong") == "Enrolling"
        page.wait_for_selector(".voice-state[data-state='ready']", timeout=60_000)
        voice_id = off_the_loop(lambda: Avatar.objects.get(pk=aria.pk).cloned_voice)
        assert voice_id and voice_id in page.inner_text(".voice-state")

        status = "document.querySelector('.voice-preview-status').textContent"
        played = "document.querySelector('audio.voice-preview-audio').currentTime > 0"

        def preview() -> str:
            before = {id(task) for task in dashscope_server.of("tts")}
            page.evaluate(f"() => {{ {status} = ''; }}")
            page.click("button.voice-preview")
            page.wait_for_function(f"() => {status}.startsWith('Playing') && {played}")
            spoken = [t for t in dashscope_server.of("tts") if id(t) not in before]
            spoken.sort(key=lambda task: task.started_at or 0)
            return " ".join(t.payload["parameters"]["voice"] for t in spoken)

        assert preview() == voice_id
        assert page.inner_text(".voice-preview-status") == "Playing."
        session.screenshot(page, "admin-cloned-voice-ready")

        dashscope_server.voices.pop(voice_id)  # deleted in DashScope's console
        assert preview() == f"{voice_id} {aria.voice}"
        said = page.inner_text(".voice-preview-status")
        assert said.startswith("Playing (the cloned voice cannot speak (voice not found: ")
        assert said.endswith("): this is the preset).")

        dashscope_server.voices.clear()
        save_sample(good)  # a new sample: enrolled afresh
        page.wait_for_selector(".voice-state[data-state='ready']", timeout=60_000)
        again = off_the_loop(lambda: Avatar.objects.get(pk=aria.pk).cloned_voice)
        page.check("#voice_sample-clear_id")
        page.select_option("#id_voice_source", "preset")
        page.click("input[name=_continue]")
        page.wait_for_load_state()
        assert page.inner_text(".voice-state strong") == "No sample"
        deadline = time.monotonic() + 30
        while again not in dashscope_server.deleted_voices:
            assert time.monotonic() < deadline, "the cleared sample's voice was not deleted"
            time.sleep(0.2)
        page.goto(f"{cloud_admin.url}/admin/avatars/pendingvoicedeletion/")
        assert "0 pending voice deletions" in page.inner_text("#content")
        failed = False
    finally:
        session.close(failed)
