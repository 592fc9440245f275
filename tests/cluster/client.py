"""The cluster test's users: run inside `echo-client` (behind the NAT router, reaching only the
edge) with `SSL_CERT_FILE=<ca_file>`, exactly as a browser would use the service.

    python -m tests.cluster.client SCENARIO EDGE_URL [options]

It prints one JSON line per phase (`{"phase": …}`) and, between phases, waits for a line on
stdin, so the test (outside, as the operator) can look at the hosts while sessions are open.
Everything is bounded in time; an unexpected failure is reported as `{"phase": "failed"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import websockets

from tests.audio import rms, speak

SENTENCE = "Hello there. What is the weather like today?"
DIRECT = ""  # --direct ADDRESS: talk to that web process itself, not through the edge
URL_FIELDS = {"tts_complete": "audio_url", "video_segment": "url", "video_ready": "video_url"}


class Session:
    """One user's session: a reader task keeps every event, with its arrival time."""

    def __init__(self, ws: Any, edge: str) -> None:
        self.ws = ws
        self.edge = edge
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.closed_code: int | None = None
        self.peer: Any = None  # a WebRTC client peer, closed after the session
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, edge: str, query: str) -> Session:
        url = edge.replace("https://", "wss://").replace("http://", "ws://").rstrip("/")
        extra = {"host": DIRECT, "port": 8000} if DIRECT else {}
        ws = await asyncio.wait_for(
            websockets.connect(
                url + "/ws/chat/" + query,
                max_size=None,
                origin=edge.rstrip("/"),
                open_timeout=20,
                **extra,
            ),
            30,
        )
        session = cls(ws, edge)
        await session.until("init")
        return session

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if isinstance(frame, str):
                    self.events.append((time.monotonic(), json.loads(frame)))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_code = self.ws.close_code

    @property
    def init(self) -> dict[str, Any]:
        return self.of("init")[0]

    @property
    def session_id(self) -> str:
        return self.init["session_id"]

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def at(self, kind: str) -> float:
        return next(t for t, e in self.events if e["type"] == kind)

    def at_last(self, kind: str) -> float:
        return [t for t, e in self.events if e["type"] == kind][-1]

    def summary(self) -> list[str]:
        return [e["type"] if e["type"] != "error" else f"error:{e['code']}" for _, e in self.events]

    async def until(self, kind: str, count: int = 1, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind!r} after {timeout}s: {self.summary()}")
            if self._reader.done():
                raise AssertionError(
                    f"closed ({self.closed_code}) before {kind!r}: {self.summary()}"
                )
            await asyncio.sleep(0.05)
        return self.of(kind)[count - 1]

    def urls(self) -> list[str]:
        found = [self.init["avatar"]["image_url"]]
        for _, event in self.events:
            field = URL_FIELDS.get(event["type"])
            if field and event.get(field):
                found.append(event[field])
        return found

    async def stop(self) -> dict[str, Any]:
        await self.send(type="stop_session")
        try:
            return await self.until("session_ended", timeout=30)
        finally:
            await self.ws.close()
            if self.peer is not None:
                await self.peer.close()

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


def http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET or POST through the edge with the system's (SSL_CERT_FILE) trust: a browser's view."""
    headers = dict(headers or {})
    if DIRECT:  # straight to a web process: its address, the public name as Host
        parts = urllib.parse.urlsplit(url)
        headers["Host"] = parts.netloc
        url = urllib.parse.urlunsplit(parts._replace(netloc=f"{DIRECT}:8000"))
    request = urllib.request.Request(url, data=data, headers=headers)
    context = ssl.create_default_context()
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def upload(session: Session, wav: bytes) -> dict[str, Any]:
    url = f"{session.edge.rstrip('/')}/api/sessions/{session.session_id}/audio"
    headers = {
        "Authorization": f"Bearer {session.init['session_token']}",
        "Content-Type": "audio/wav",
    }
    status, body = await asyncio.to_thread(http, url, wav, headers)
    if status != 202:
        raise AssertionError(f"upload answered {status}: {body[:300]!r}")
    return json.loads(body)


async def text_turn(session: Session) -> dict[str, Any]:
    await session.send(type="text_message", text="What should I see in Kyoto?", id="t1")
    await session.until("tts_complete", timeout=150)
    return {"kind": "text", "reply": session.of("text_response")[0]["text"][:80]}


async def voice_upload_turn(session: Session, wav: bytes) -> dict[str, Any]:
    await upload(session, wav)
    result = await session.until("asr_result", timeout=150)
    await session.until("tts_complete", timeout=150)
    return {"kind": "upload-voice", "heard": result["text"]}


async def video_upload_turn(session: Session, wav: bytes) -> dict[str, Any]:
    await upload(session, wav)
    ready = await session.until("video_ready", timeout=240)
    await asyncio.sleep(1.0)  # a duplicate would arrive right behind
    return {
        "kind": "upload-video",
        "video_ready": len(session.of("video_ready")),
        "segments": len(session.of("video_segment")),
        "duration_ms": ready["duration_ms"],
    }


def selected_pair(pc: Any) -> tuple[str, str] | None:
    """The candidate types (local, remote) of the pair ICE chose (aioice's nominated pair)."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for pair in getattr(connection, "_nominated", {}).values():
            return pair.local_candidate.type, pair.remote_candidate.type
    return None


async def webrtc_turn(session: Session) -> dict[str, Any]:
    from tests.fixtures_realtime import ClientPeer

    client = ClientPeer(session.init["server_info"]["ice_servers"])
    session.peer = client  # kept open until the session stops, as a browser tab would
    await session.send(type="offer", sdp=await client.offer(), sdp_type="offer", id="o1")
    answer = await session.until("answer", timeout=60)
    await client.accept(answer["sdp"])
    await session.until("connected", timeout=60)
    await session.send(type="ready", direction="both", id="r1")
    await session.until("ready", timeout=30)
    await session.send(type="asr_start", language="en-US", id="a1")
    client.mic.play_wav(speak(SENTENCE))
    result = await session.until("asr_result", timeout=90)
    await session.until("tts_complete", timeout=120)
    await asyncio.sleep(0.5)
    heard = client.audio_since(session.at("tts_start") - 0.1)
    return {
        "kind": "webrtc",
        "heard": result["text"],
        "reply_rms": float(rms(heard)) if len(heard) else 0.0,
        "pair": selected_pair(client.pc),
    }


def check_url(url: str, edge: str) -> dict[str, Any]:
    status, body = http(url)
    return {"url": url, "status": status, "bytes": len(body), "edge": url.startswith(edge)}


def say(**report: Any) -> None:
    print(json.dumps(report), flush=True)


async def wait_for_go(timeout: float = 300) -> str:
    line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), timeout)
    return line.strip()


# --- scenarios ------------------------------------------------------------------------------
async def spread(edge: str, sessions: int) -> None:
    """Scenario 1 and 6: `sessions` sessions through the edge, each with a text turn; four
    also upload a voice turn, two are video sessions uploading a turn, two talk over WebRTC;
    then every media URL any of them got is fetched from here."""
    wav = speak("what is the weather like in london").read_bytes()
    videos, webrtc, uploads = 2, 2, 4
    queries = ["?mode=video&avatar=aria"] * videos + ["?mode=voice"] * (sessions - videos)
    opened = await asyncio.gather(*(Session.open(edge, q) for q in queries))
    say(phase="open", sessions=[s.session_id for s in opened])

    jobs: list[Any] = []
    for index, session in enumerate(opened):
        if index < videos:
            jobs.append(video_upload_turn(session, wav))
        elif index < videos + webrtc:
            jobs.append(webrtc_turn(session))
        elif index < videos + webrtc + uploads:
            jobs.append(voice_upload_turn(session, wav))
        else:
            jobs.append(text_turn(session))
    turns = await asyncio.gather(*jobs, return_exceptions=True)
    results = [
        t if isinstance(t, dict) else {"kind": "failed", "error": repr(t)[:500]} for t in turns
    ]
    urls = sorted({u for s in opened for u in s.urls()})
    fetched = await asyncio.gather(*(asyncio.to_thread(check_url, u, edge) for u in urls))
    errors = [e for s in opened for e in s.of("error")]
    say(phase="turns", turns=results, urls=list(fetched), errors=errors)

    await wait_for_go()  # the test looks at every host's MEDIA_ROOT and at the bucket
    ended = await asyncio.gather(*(s.stop() for s in opened), return_exceptions=True)
    say(
        phase="ended",
        files_deleted=[e["files_deleted"] if isinstance(e, dict) else repr(e) for e in ended],
    )


async def video(edge: str, avatars: list[str]) -> None:
    """Scenario 2: one video session per avatar, their upload turns at the same time."""
    wav = speak("what is the weather like in london").read_bytes()
    opened = await asyncio.gather(*(Session.open(edge, f"?mode=video&avatar={a}") for a in avatars))
    turns = await asyncio.gather(*(video_upload_turn(s, wav) for s in opened))
    say(
        phase="done",
        turns=[
            {**turn, "avatar": avatar, "task_id": s.of("video_queued")[0]["task_id"]}
            for avatar, s, turn in zip(avatars, opened, turns, strict=True)
        ],
        errors=[e for s in opened for e in s.of("error")],
    )
    ended = await asyncio.gather(*(s.stop() for s in opened))
    say(
        phase="ended",
        sessions=[s.session_id for s in opened],
        files_deleted=[e["files_deleted"] for e in ended],
    )


async def long_render(edge: str, avatar: str) -> None:
    """Scenarios 2 and 3: a long video turn; meanwhile the test sends another turn (which must
    go to the other GPU host) or kills the GPU host rendering this one."""
    wav = speak(
        "I would like to travel to Japan next spring with my family. Which cities should we"
        " visit, how many days should we stay in each of them, and which trains should we"
        " take between them? We like old temples, gardens, good food and quiet places."
    ).read_bytes()
    session = await Session.open(edge, f"?mode=video&avatar={avatar}")
    await upload(session, wav)
    progress = await session.until("video_progress", timeout=150)
    say(phase="rendering", session=session.session_id, task_id=progress["task_id"])
    await wait_for_go()  # the test is done with the GPU host rendering it
    ready = await session.until("video_ready", timeout=240)
    ready_at = session.at("video_ready")
    await asyncio.sleep(3.0)  # a second video_ready would come in this time
    say(
        phase="done",
        video_ready=len(session.of("video_ready")),
        video_url=ready["video_url"],
        video_ready_at=ready_at,  # time.monotonic(): one clock for every namespace
        errors=[e for e in session.of("error")],
        closed=session.closed_code,
    )
    ended = await session.stop()
    say(phase="ended", files_deleted=ended["files_deleted"])


async def attempt(job: Any) -> str:
    try:
        await job
        return "ok"
    except AssertionError as exc:
        found = re.search(r"error:(ERR_[A-Z_]+)|closed \((\d+)\)", str(exc))
        return f"failed:{found.group(0) if found else str(exc)[:200]}"


async def web_fail(edge: str, sessions: int) -> None:
    """Scenario 4: sessions with a turn each; the test kills a web host; the clients whose
    connection closed reconnect through the edge and carry on, the others just carry on."""
    opened = await asyncio.gather(*(Session.open(edge, "?mode=voice") for _ in range(sessions)))
    await asyncio.gather(*(text_turn(s) for s in opened))
    say(phase="open", sessions=[s.session_id for s in opened])
    await wait_for_go()  # one web host has been killed
    deadline = time.monotonic() + 30
    lost = [s for s in opened if s._reader.done()]
    while not lost and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        lost = [s for s in opened if s._reader.done()]
    await asyncio.sleep(2.0)  # every connection of the dead host has closed by now
    lost = [s for s in opened if s._reader.done()]
    kept = [s for s in opened if s not in lost]
    again = await asyncio.gather(*(Session.open(edge, "?mode=voice") for _ in lost))
    outcomes = await asyncio.gather(*(attempt(text_turn(s)) for s in [*again, *kept]))
    say(
        phase="after",
        lost=[{"session": s.session_id, "code": s.closed_code} for s in lost],
        reconnected=[s.session_id for s in again],
        kept=[s.session_id for s in kept],
        outcomes=outcomes,
    )
    await asyncio.gather(*(s.stop() for s in [*again, *kept]), return_exceptions=True)
    say(phase="ended")


async def redis_restart(edge: str, sessions: int) -> None:
    """Scenario 5: sessions open while the test restarts Redis; each then tries a turn, and a
    new session must work fully (text and an upload turn)."""
    wav = speak("what is the weather like in london").read_bytes()
    opened = await asyncio.gather(*(Session.open(edge, "?mode=voice") for _ in range(sessions)))
    await asyncio.gather(*(text_turn(s) for s in opened))
    say(phase="open", sessions=[s.session_id for s in opened])
    await wait_for_go()  # Redis on echo-data has been restarted
    started = time.monotonic()
    outcomes = await asyncio.gather(*(attempt(text_turn(s)) for s in opened))
    fresh = await Session.open(edge, "?mode=voice")
    fresh_text = await attempt(text_turn(fresh))
    fresh_upload = await attempt(voice_upload_turn(fresh, wav))
    say(
        phase="after",
        outcomes=outcomes,
        closed=[s.closed_code for s in opened],
        fresh=[fresh_text, fresh_upload],
        seconds=round(time.monotonic() - started, 1),
    )
    await asyncio.gather(*(s.stop() for s in [*opened, fresh]), return_exceptions=True)
    say(phase="ended")


def speech_end_s(path: Any, threshold: float = 300.0) -> float:
    """Where the last speech-like 20 ms of a WAV ends, in seconds from its start."""
    from tests.audio import read_wav

    pcm, rate = read_wav(path)
    step = rate // 50
    loud = [i for i in range(0, len(pcm) - step + 1, step) if rms(pcm[i : i + step]) > threshold]
    return (loud[-1] + step) / rate if loud else 0.0


async def measure(edge: str, turns: int) -> None:
    """bench/cluster.py: WebRTC turns (end of speech → first reply audio heard) and upload
    turns (POST → tts_complete), through the edge and TURN, or (--direct) on the web host."""
    from tests.fixtures_realtime import ClientPeer

    wav_path = speak(SENTENCE)
    speech_s = speech_end_s(wav_path)
    session = await Session.open(edge, "?mode=voice")
    client = ClientPeer([] if DIRECT else session.init["server_info"]["ice_servers"])
    session.peer = client
    await session.send(type="offer", sdp=await client.offer(), sdp_type="offer", id="o1")
    answer = (await session.until("answer", timeout=60))["sdp"]
    if DIRECT:  # loopback only: the server's relayed candidates are not offered to this client
        answer = "".join(line for line in answer.splitlines(True) if " typ relay" not in line)
    await client.accept(answer)
    await session.until("connected", timeout=60)
    await session.send(type="ready", direction="both", id="r1")
    await session.until("ready", timeout=30)
    await session.send(type="asr_start", language="en-US", id="a1")
    webrtc_ms = []
    for turn in range(1, turns + 1):
        await asyncio.sleep(1.0)
        played_at = time.monotonic()
        client.mic.play_wav(wav_path)
        await session.until("tts_complete", count=turn, timeout=120)
        speech_end = played_at + speech_s
        loud = [t for t, pcm in client.received if t > speech_end and rms(pcm) > 300]
        webrtc_ms.append(round((loud[0] - speech_end) * 1000) if loud else None)
    pair = selected_pair(client.pc)
    upload_ms = []
    wav = speak("what is the weather like in london").read_bytes()
    for _ in range(turns):
        done = len(session.of("tts_complete"))
        started = time.monotonic()
        await upload(session, wav)
        await session.until("tts_complete", count=done + 1, timeout=120)
        upload_ms.append(round((session.at_last("tts_complete") - started) * 1000))
    say(phase="measured", webrtc_ms=webrtc_ms, upload_ms=upload_ms, pair=pair)
    await session.stop()


async def main_async(args: argparse.Namespace) -> None:
    scenarios = {
        "spread": lambda: spread(args.edge, args.sessions),
        "video": lambda: video(args.edge, args.avatars),
        "long-render": lambda: long_render(args.edge, args.avatars[0]),
        "web-fail": lambda: web_fail(args.edge, args.sessions),
        "redis-restart": lambda: redis_restart(args.edge, args.sessions),
        "measure": lambda: measure(args.edge, args.turns),
    }
    await scenarios[args.scenario]()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario",
        choices=["spread", "video", "long-render", "web-fail", "redis-restart", "measure"],
    )
    parser.add_argument("edge")
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--avatars", nargs="+", default=["aria"])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--direct", default="", help="a web process's address, not the edge")
    args = parser.parse_args()
    global DIRECT
    DIRECT = args.direct
    try:
        asyncio.run(asyncio.wait_for(main_async(args), 600))
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        say(phase="failed", error=repr(exc)[:2000], trace=traceback.format_exc()[-3000:])
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
