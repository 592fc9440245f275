"""A web process loads at start-up what sessions use, so its first session does not hold the
event loop (every other session's audio in the process) while the media stack and the
providers' SDKs are imported and their TLS certificates loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from harness.procs import ROOT, child_env

# In a fresh process: start-up's preload, then a first WebRTC session (the server's
# `PeerSession` negotiating with a browser stand-in and carrying audio for a second); prints
# what was loaded at start-up and which modules the session still had to import.
SCRIPT = """
import asyncio, json, sys
import django
django.setup()
from echoproject.web import preload
preload()
loaded = sorted(m.split(".")[0] for m in sys.modules)
before = set(sys.modules)
from chat.realtime.peer import PeerSession
from harness.peer import ClientPeer

async def first_session():
    client = ClientPeer(keep_audio=False)
    server = PeerSession(on_audio=lambda pcm: None, on_state=lambda state: None)
    await client.accept((await server.accept_offer(await client.offer())).sdp)
    await asyncio.sleep(1.0)
    await client.close()
    await server.close()

asyncio.run(first_session())
from chat.providers import cloud
from dashscope.api_entities import aio_session
print(json.dumps({
    "loaded": sorted(set(loaded)),
    "imported_by_the_session": sorted(set(sys.modules) - before),
    "websocket_tls": cloud._tls_context is not None,
    "http_tls": aio_session._shared_ssl_context is not None,
}))
"""
STACKS = ("aiortc", "aioice", "av", "pylibsrtp", "dashscope", "aiohttp", "websocket")


def _in_a_fresh_process(script: str, **env: str) -> Any:
    """What `script`, run in a new Python process with `env`, prints last (JSON)."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_first_session_imports_nothing_of_the_media_stack_or_the_cloud_sdks() -> None:
    seen = _in_a_fresh_process(
        SCRIPT,
        ASR_BACKEND="dashscope",
        LLM_BACKEND="dashscope",
        TTS_BACKEND="dashscope",
        DASHSCOPE_API_KEY="sk-preload-test",
        DASHSCOPE_WEBSOCKET_BASE_URL="wss://127.0.0.1:9/api-ws/v1/inference",
    )
    assert {"aiortc", "av", "dashscope"} <= set(seen["loaded"])
    late = [m for m in seen["imported_by_the_session"] if m.split(".")[0] in STACKS]
    assert late == []
    assert seen["websocket_tls"] and seen["http_tls"]  # both CA stores loaded at start-up


def test_an_offline_web_process_still_never_imports_the_cloud_sdks() -> None:
    modules = set(
        _in_a_fresh_process(
            "import django, json, sys; django.setup(); from echoproject.web import preload; "
            "preload(); print(json.dumps(sorted(sys.modules)))",
            ASR_BACKEND="pocketsphinx",
            LLM_BACKEND="persona",
            TTS_BACKEND="espeak",
        )
    )
    assert "aiortc" in modules  # the media stack is loaded
    assert not {m for m in modules if m.split(".")[0] in ("dashscope", "openai", "websocket")}
