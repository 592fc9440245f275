"""Fixtures of the browser tests (registered in tests/conftest.py): the web process serving the
client from its collected static files, and headless Chromium (Debian's) driven by Playwright,
with a fake microphone that plays a WAV file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.audio import CACHE, read_wav, speak, write_wav
from tests.procs import ROOT, Proc, child_env, free_port, port_open

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
MIC_RATE = 48000
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class WebServer:
    """`python -m echoproject.web` on a port it keeps across restarts, so that a restart is a
    server dropping every socket and coming back where the page expects it."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir, self.env = log_dir, env
        self.port = free_port()
        self.starts = 0
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc(
            f"web-client-{self.starts}",
            [sys.executable, "-m", "echoproject.web"],
            {**self.env, "HOST": "127.0.0.1", "PORT": str(self.port)},
            self.log_dir,
        )
        self.proc.wait_until(lambda: port_open(self.port), what="listening")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def web_client_server(django_db_setup: None, log_dir: Path) -> Iterator[WebServer]:
    """The web process with its static files collected, as `make run` does before starting it
    (WhiteNoise serves STATIC_ROOT, which is per test run here)."""
    env = child_env(HEARTBEAT_INTERVAL_S="2")  # announced to the page, which pings that often
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    server = WebServer(log_dir, env)
    yield server
    server.stop()


def microphone_wav(name: str, text: str | None, lead_s: float = 0.5, tail_s: float = 3.0) -> Path:
    """A 16-bit mono WAV for Chromium's fake microphone: espeak-ng saying `text` between
    silences (or only silence), which the fake device plays in a loop."""
    if text is None:
        pcm = np.zeros(0, dtype=np.int16)
    else:
        pcm, _ = read_wav(speak(text, sample_rate=MIC_RATE))
    lead, tail = (np.zeros(int(s * MIC_RATE), np.int16) for s in (lead_s, tail_s))
    full = np.concatenate([lead, pcm, tail])
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"mic-{name}-{os.getpid()}.wav"
    write_wav(path, full, MIC_RATE)
    return path


class BrowserSession:
    """One Chromium with its fake microphone; pages opened on the web client."""

    def __init__(self, server: WebServer, request: pytest.FixtureRequest) -> None:
        from playwright.sync_api import sync_playwright

        self.server = server
        self.name = request.node.name
        self.log: list[str] = []
        self._playwright = sync_playwright().start()
        self.browser: Any = None
        self.pages: list[Any] = []

    def launch(self, microphone: Path | None) -> None:
        args = list(BROWSER_ARGS)
        if microphone is not None:
            args.append(f"--use-file-for-fake-audio-capture={microphone}")
        self.browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=args
        )

    def open(self, viewport: dict[str, int] = DESKTOP, locale: str = "en-US") -> Any:
        if self.browser is None:
            self.launch(None)
        context = self.browser.new_context(viewport=viewport, locale=locale)
        context.grant_permissions(["microphone"], origin=self.server.url)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("console", lambda m: self.log.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.log.append(f"pageerror: {e}"))
        page.goto(self.server.url + "/")
        self.pages.append(page)
        return page

    def screenshot(self, page: Any, name: str, *, also: Path | None = None) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path))
        if also is not None and os.environ.get("UPDATE_SCREENSHOTS"):  # a run leaves docs/ alone
            also.parent.mkdir(parents=True, exist_ok=True)
            also.write_bytes(path.read_bytes())
        return path

    def close(self, failed: bool) -> None:
        try:
            if failed:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                for index, page in enumerate(self.pages):
                    page.screenshot(path=str(SCREENSHOTS / f"FAILED-{self.name}-{index}.png"))
                (SCREENSHOTS / f"FAILED-{self.name}.log").write_text("\n".join(self.log))
        finally:
            if self.browser is not None:
                self.browser.close()
            self._playwright.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.browser_failed = report.failed  # type: ignore[attr-defined]
    return report


@pytest.fixture
def browser(
    web_client_server: WebServer,
    live_avatars: list,
    celery_worker: Proc,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., BrowserSession]]:
    """`browser(microphone=wav)` launches Chromium whose microphone plays that WAV."""
    sessions: list[BrowserSession] = []

    def launch(microphone: Path | None = None) -> BrowserSession:
        session = BrowserSession(web_client_server, request)
        session.launch(microphone)
        sessions.append(session)
        return session

    yield launch
    failed = getattr(request.node, "browser_failed", False)
    for session in sessions:
        session.close(failed)
        if failed:
            print("\n".join(session.log[-60:]))
    uncaught = [line for s in sessions for line in s.log if line.startswith("pageerror")]
    assert not uncaught, f"the page threw: {uncaught}"
