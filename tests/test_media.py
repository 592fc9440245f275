"""A session's files from the outside: unguessable names, URLs signed for one file of one
session until they expire (403 otherwise), the right headers, and byte ranges for video."""

from __future__ import annotations

import asyncio
import http.client
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from chat.storage import save_for_session, sign_media
from tests.fixtures_sessions import Client, run

pytestmark = pytest.mark.usefixtures("live_avatars")


def with_sessions(
    connect: Callable[..., Any], check: Callable[[list[dict[str, Any]]], None], sessions: int = 1
) -> None:
    """Open `sessions` sessions with one text turn each and run `check` on their `init` and the
    reply's audio URL while they are still open (a session's files go when it ends)."""

    async def body() -> None:
        found: list[dict[str, Any]] = []
        opened = []
        try:
            for i in range(sessions):
                session = connect("?mode=voice")
                client: Client = await session.__aenter__()
                opened.append(session)
                init = await client.recv()
                await client.send(type="text_message", text=f"hello there number {i}")
                complete = await client.until("tts_complete", fail_on_error=True)
                found.append({"init": init, "url": complete["audio_url"]})
            await asyncio.to_thread(check, found)
        finally:
            for session in opened:
                await session.__aexit__(None, None, None)

    run(body(), timeout=90)


def parts(url: str) -> tuple[str, str, dict[str, str]]:
    split = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(split.query).items()}
    return f"{split.scheme}://{split.netloc}", split.path, query


def test_session_files_have_unguessable_names_and_signed_urls_with_right_headers(
    connect: Callable[..., Any],
) -> None:
    def check(found: list[dict[str, Any]]) -> None:
        [item] = found
        origin, path, query = parts(item["url"])
        session_id = item["init"]["session_id"]
        assert re.fullmatch(
            rf"/media/sessions/{session_id}/audio/reply-\d+-[0-9a-f]{{20}}\.wav", path
        )
        assert set(query) == {"e", "s"}
        answer = httpx.get(item["url"])
        assert answer.status_code == 200 and answer.content[:4] == b"RIFF"
        assert answer.headers["Content-Type"] == "audio/wav"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Content-Disposition"] == f'inline; filename="{path.split("/")[-1]}"'
        assert answer.headers["Accept-Ranges"] == "bytes"
        # the name without its token (what a sequential message id would give): not there
        guessed = re.sub(r"-[0-9a-f]{20}\.wav$", ".wav", path)
        assert (
            httpx.get(origin + guessed, params=sign_media(guessed[len("/media/") :])).status_code
            == 404
        )

    with_sessions(connect, check)


def test_tampered_expired_or_borrowed_media_urls_get_403(connect: Callable[..., Any]) -> None:
    def check(found: list[dict[str, Any]]) -> None:
        origin, path, query = parts(found[0]["url"])
        _, other_path, other_query = parts(found[1]["url"])
        assert httpx.get(found[0]["url"]).status_code == 200
        assert httpx.get(origin + path).status_code == 403  # no signature
        flipped = query["s"][:-1] + ("0" if query["s"][-1] != "0" else "1")
        assert httpx.get(origin + path, params={**query, "s": flipped}).status_code == 403
        later = str(int(query["e"]) + 3600)  # the expiry moved on, the signature kept
        assert httpx.get(origin + path, params={**query, "e": later}).status_code == 403
        # another session's signature on this session's file, and the other way round
        assert httpx.get(origin + path, params=other_query).status_code == 403
        assert httpx.get(origin + other_path, params=query).status_code == 403
        # a correctly signed URL whose time is over
        name = path[len("/media/") :]
        expired = sign_media(name, expires=int(query["e"]) - 2 * 3600 - 10)
        answer = httpx.get(origin + path, params=expired)
        assert answer.status_code == 403 and answer.text == "Forbidden (403)"

    with_sessions(connect, check, sessions=2)


def raw_get(origin: str, target: str) -> int:
    """The status of a GET of `target` sent as written (httpx would resolve `..` and `.`)."""
    host, port = urlsplit(origin).hostname, urlsplit(origin).port
    connection = http.client.HTTPConnection(host or "127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", target)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_session_file_reached_by_another_path_still_needs_its_signature(
    connect: Callable[..., Any],
) -> None:
    def check(found: list[dict[str, Any]]) -> None:
        origin, path, query = parts(found[0]["url"])
        name = path[len("/media/") :]
        signed = "?" + urlencode(query)
        for target in (
            f"/media/avatars/../{name}",
            f"/media/./{name}",
            f"/media/avatars/%2e%2e/{name}",
            f"/media/sessions/../{name}",
        ):
            assert raw_get(origin, target) == 403, target  # no signature
            expired = sign_media(name, expires=int(query["e"]) - 2 * 3600 - 10)
            assert raw_get(origin, f"{target}?{urlencode(expired)}") == 403, target
            # the URL the session was given still opens its file however the path is spelt
            assert raw_get(origin, target + signed) == 200, target

    with_sessions(connect, check)


def test_video_is_served_in_byte_ranges(connect: Callable[..., Any]) -> None:
    from chat.storage import public_url

    def check(found: list[dict[str, Any]]) -> None:
        origin, _, _ = parts(found[0]["url"])
        session_id = found[0]["init"]["session_id"]
        video = bytes(range(256)) * 40  # 10240 bytes standing in for an MP4
        name = save_for_session(session_id, "video/1/video.mp4", video)
        assert name is not None
        url = public_url(name)
        url = url if url.startswith("http") else origin + url
        whole = httpx.get(url)
        assert whole.status_code == 200 and whole.content == video
        assert whole.headers["Content-Type"] == "video/mp4"
        part = httpx.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == video[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(video)}"
        assert part.headers["Content-Length"] == "100"
        tail = httpx.get(url, headers={"Range": "bytes=-16"})
        assert tail.status_code == 206 and tail.content == video[-16:]
        rest = httpx.get(url, headers={"Range": "bytes=10000-"})
        assert rest.content == video[10000:]
        past = httpx.get(url, headers={"Range": f"bytes={len(video)}-"})
        assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{len(video)}"

    with_sessions(connect, check)


def test_avatar_portraits_stay_public(connect: Callable[..., Any], live_avatars: list) -> None:
    def check(found: list[dict[str, Any]]) -> None:
        image_url = found[0]["init"]["avatar"]["image_url"]
        answer = httpx.get(image_url)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("image/")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"

    with_sessions(connect, check)
