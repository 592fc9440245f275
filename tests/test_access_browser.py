"""The web client on a site where only logged-in users may talk, in headless Chromium: refused
with a sentence before logging in, a session of the user's own after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from chat.models import ChatSession
from tests.fixtures_browser import BrowserSession, WebServer
from tests.procs import child_env

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def login_site(web_client_server: WebServer, log_dir: Path) -> Iterator[WebServer]:
    """A second web process (static files collected by the first) with CHAT_ACCESS=login."""
    server = WebServer(log_dir, child_env(HEARTBEAT_INTERVAL_S="2", CHAT_ACCESS="login"))
    yield server
    server.stop()


@pytest.fixture
def ada(live_avatars: list) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("ada", password="lovelace-1815")


@pytest.fixture
def chromium(
    login_site: WebServer, ada: Any, request: pytest.FixtureRequest
) -> Iterator[BrowserSession]:
    session = BrowserSession(login_site, request)
    session.launch(None)
    yield session
    session.close(getattr(request.node, "browser_failed", False))
    assert not [line for line in session.log if line.startswith("pageerror")], session.log


def off_the_loop(query: Callable[[], Any]) -> Any:
    """Run an ORM query in a thread of its own (Playwright runs an event loop in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(query).result()


def test_the_page_asks_to_log_in_and_talks_once_logged_in(
    chromium: BrowserSession, login_site: WebServer, ada: Any
) -> None:
    page: Any = chromium.open()
    page.wait_for_selector("#error[data-code='ERR_AUTH']:not([hidden])")
    page.wait_for_selector("#app[data-connection='closed']")
    assert page.inner_text("#error-text").strip()  # a sentence, not a code
    assert not off_the_loop(ChatSession.objects.exists)

    chromium.screenshot(page, "login-site-refused")
    page.click("#error-login")  # the page's way to the site's login
    page.fill("#id_username", "ada")
    page.fill("#id_password", "lovelace-1815")
    page.click("button[type=submit]")
    page.wait_for_url(login_site.url + "/")
    page.wait_for_selector("#app[data-connection='connected']", timeout=20_000)
    session_id = page.get_attribute("#app", "data-session")
    assert off_the_loop(lambda: ChatSession.objects.get(pk=session_id).user_id) == ada.pk
    chromium.screenshot(page, "login-site-connected")
