"""Who may open a session, from the outside: tickets from `POST /api/tickets` on a real daphne,
used on the real WebSocket and the upload endpoint, under each CHAT_ACCESS rule."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from django.test import override_settings

from chat import access
from chat.models import ChatSession
from tests.audio import speak
from tests.fixtures_sessions import daphne_with, run

pytestmark = pytest.mark.usefixtures("live_avatars")


@pytest.fixture(scope="module")
def servers(django_db_setup: None, log_dir: Path) -> Iterator[dict[str, str]]:
    """One web process per access rule; yields their http:// base URLs by rule."""
    procs = {
        "anonymous": daphne_with(log_dir, "daphne-access-anonymous"),
        "login": daphne_with(log_dir, "daphne-access-login", CHAT_ACCESS="login"),
        "token": daphne_with(
            log_dir, "daphne-access-token", CHAT_REQUIRE_TOKEN="true", CHAT_TOKENS="s3cret,other"
        ),
    }
    yield {rule: f"http://127.0.0.1:{port}" for rule, (_, port) in procs.items()}
    for proc, _ in procs.values():
        proc.stop()


def open_session(base: str, query: str) -> list[dict[str, Any]]:
    """Connect to /ws/chat/ and read until `init` or the close; returns the events."""

    async def body() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        url = base.replace("http://", "ws://") + "/ws/chat/" + query
        async with websockets.connect(url) as ws:
            try:
                while True:
                    frame = json.loads(await ws.recv())
                    events.append(frame)
                    if frame["type"] == "init":
                        await ws.send(json.dumps({"type": "stop_session"}))
                        await ws.recv()  # session_ended
                        break
            except websockets.ConnectionClosed as closed:
                events.append({"type": "closed", "code": closed.rcvd.code if closed.rcvd else None})
        return events

    return run(body(), timeout=30)


def refused(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The error of a refused handshake, after checking it was closed 4401 without `init`."""
    assert [e["type"] for e in events] == ["error", "closed"], events
    assert events[0]["code"] == "ERR_AUTH" and events[1]["code"] == 4401
    return events[0]


def ticket(base: str, headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    return httpx.post(f"{base}/api/tickets", json=fields, headers=headers, timeout=20)


def test_anonymous_site_hands_tickets_to_anyone_and_the_session_follows_them(
    servers: dict[str, str],
) -> None:
    base = servers["anonymous"]
    answer = ticket(base, avatar="lin", mode="video")
    assert answer.status_code == 200 and answer.headers["Cache-Control"].startswith("max-age=0")
    data = answer.json()
    assert data["avatar"] == "lin" and data["mode"] == "video"
    # the ticket alone names avatar and mode
    [init] = open_session(base, f"?ticket={data['ticket']}")[:1]
    assert init["type"] == "init" and init["avatar"]["slug"] == "lin" and init["mode"] == "video"
    session = ChatSession.objects.get(pk=init["session_id"])
    assert session.user is None and session.client_info["ticket"]
    # no ticket on an anonymous site: allowed, as the protocol always was
    assert open_session(base, "?mode=voice")[0]["type"] == "init"


def test_a_ticket_for_another_avatar_or_mode_forged_or_expired_is_refused(
    servers: dict[str, str],
) -> None:
    base = servers["anonymous"]
    value = ticket(base, avatar="lin", mode="voice").json()["ticket"]
    other_avatar = refused(open_session(base, f"?ticket={value}&avatar=aria"))
    assert "another avatar" in other_avatar["message"]
    other_mode = refused(open_session(base, f"?ticket={value}&mode=video"))
    assert "another mode" in other_mode["message"]
    # one changed character of the payload: the signature no longer matches
    payload, rest = value.split(":", 1)
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + ":" + rest
    assert refused(open_session(base, f"?ticket={forged}"))["message"] == "the ticket is not valid"
    assert refused(open_session(base, "?ticket=garbage"))["retryable"] is False
    with override_settings(CHAT_TICKET_TTL_S=-1):  # signed with the site's key, already over
        expired, _ = access.issue("lin", "voice")
    error = refused(open_session(base, f"?ticket={expired}"))
    assert "expired" in error["message"] and error["retryable"] is True
    # the same ticket unchanged still opens its session
    assert open_session(base, f"?ticket={value}&avatar=lin&mode=voice")[0]["type"] == "init"


def test_ticket_requests_with_bad_fields_get_documented_codes(servers: dict[str, str]) -> None:
    base = servers["anonymous"]
    bad_mode = ticket(base, mode="karaoke")
    assert bad_mode.status_code == 400 and bad_mode.json()["error"]["code"] == "ERR_MODE_INVALID"
    no_avatar = ticket(base, avatar="nobody")
    assert no_avatar.status_code == 404
    assert no_avatar.json()["error"]["code"] == "ERR_AVATAR_NOT_FOUND"
    not_json = httpx.post(
        f"{base}/api/tickets", content=b"[1", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "ERR_BAD_MESSAGE"
    assert httpx.get(f"{base}/api/tickets").status_code == 405


def login(base: str, username: str, password: str) -> httpx.Client:
    """A browser-like client logged in through the site's login form (CSRF cookie and all)."""
    client = httpx.Client(base_url=base, timeout=20)
    client.get("/accounts/login/")
    answer = client.post(
        "/accounts/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
            "next": "/",
        },
        headers={"Referer": f"{base}/accounts/login/"},
    )
    assert answer.status_code == 302 and answer.headers["Location"] == "/", answer.text[:500]
    return client


def test_login_site_gives_tickets_only_to_logged_in_users(servers: dict[str, str]) -> None:
    from django.contrib.auth import get_user_model

    base = servers["login"]
    user = get_user_model().objects.create_user("ada", password="lovelace-1815")
    anonymous = ticket(base)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "ERR_AUTH"
    refused(open_session(base, "?mode=voice"))  # no ticket: not even the old way in
    # an anonymous site's style ticket (no user) is not enough either
    with override_settings(CHAT_TICKET_TTL_S=60):
        userless, _ = access.issue("aria", "voice")
    refused(open_session(base, f"?ticket={userless}"))

    browser = login(base, "ada", "lovelace-1815")
    answer = browser.post("/api/tickets", json={"mode": "voice"})
    browser.close()
    assert answer.status_code == 200
    value = answer.json()["ticket"]
    [init] = open_session(base, f"?ticket={value}")[:1]
    assert init["type"] == "init"
    assert ChatSession.objects.get(pk=init["session_id"]).user_id == user.pk
    # the account is switched off: its unexpired ticket no longer opens a session
    user.is_active = False
    user.save()
    assert "may log in" in refused(open_session(base, f"?ticket={value}"))["message"]


def test_token_site_keeps_static_tokens_and_issues_tickets_to_their_holders(
    servers: dict[str, str],
) -> None:
    base = servers["token"]
    assert ticket(base).status_code == 401
    assert ticket(base, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = ticket(base, headers={"Authorization": "Bearer s3cret"}, mode="voice")
    assert answer.status_code == 200
    assert open_session(base, f"?ticket={answer.json()['ticket']}")[0]["type"] == "init"
    assert ticket(base, token="other").status_code == 200  # as a field too
    # today's behaviour, kept: the static token straight on the WebSocket
    assert open_session(base, "?token=s3cret")[0]["type"] == "init"
    refused(open_session(base, "?token=nope"))
    refused(open_session(base, ""))
    # a ticket the anonymous site gave out (same key) does not open a session here
    anonymous = ticket(servers["anonymous"]).json()["ticket"]
    assert "not valid here" in refused(open_session(base, f"?ticket={anonymous}"))["message"]


@pytest.mark.usefixtures("celery_worker")
def test_upload_endpoint_takes_the_ticket_that_opened_the_session(
    servers: dict[str, str],
) -> None:
    base = servers["anonymous"]
    value = ticket(base, mode="voice").json()["ticket"]
    other = ticket(base, mode="voice").json()["ticket"]
    audio = speak("hello there").read_bytes()

    async def body() -> tuple[int, int, int]:
        url = base.replace("http://", "ws://") + f"/ws/chat/?ticket={value}"
        async with websockets.connect(url) as ws:
            init = json.loads(await ws.recv())
            upload = f"{base}/api/sessions/{init['session_id']}/audio"
            async with httpx.AsyncClient(timeout=20) as http:
                wrong = await http.post(upload, content=audio, headers={"X-Chat-Ticket": other})
                none = await http.post(upload, content=audio)
                right = await http.post(upload, content=audio, headers={"X-Chat-Ticket": value})
            await ws.send(json.dumps({"type": "stop_session"}))
            return wrong.status_code, none.status_code, right.status_code

    assert run(body(), timeout=60) == (401, 401, 202)
