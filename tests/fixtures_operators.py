"""Helpers of the tests of what operators see: a stack of its own (a web process, a worker on
the speech and render queues, the loopback DashScope as every provider) and real turns over a
real WebSocket."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets

from tests.audio import speak
from tests.fakes.dashscope_server import DashScopeServer
from tests.fixtures_rendering import RENDER_ENV
from tests.fixtures_sessions import Client
from tests.isolation import separate_redis
from tests.procs import Proc, child_env, free_port, start_celery_worker, start_daphne

UTTERANCE = "what is the weather like in london today"


@dataclass
class Stack:
    """A web process and a worker (speech and render) of their own: their own Redis database,
    their own metrics directory, the loopback DashScope as every provider."""

    env: dict[str, str]
    web: Proc
    port: int
    worker: Proc
    worker_port: int
    log_dir: Path


def operator_stack(
    log_dir: Path, name: str, dashscope: DashScopeServer, **extra: str
) -> Iterator[Stack]:
    with separate_redis() as redis_url:
        env = child_env(
            REDIS_URL=redis_url,
            METRICS_DIR=str(log_dir / f"metrics-{name}"),
            ASR_BACKEND="dashscope",
            LLM_BACKEND="dashscope",
            TTS_BACKEND="dashscope",
            DASHSCOPE_API_KEY=dashscope.api_key,
            DASHSCOPE_HTTP_BASE_URL=dashscope.http_base_url,
            DASHSCOPE_WEBSOCKET_BASE_URL=dashscope.websocket_url,
            DASHSCOPE_TTS_PRECONNECT="0",
            PUBLIC_BASE_URL="http://127.0.0.1:9",  # file ASR needs a URL; the fake never fetches it
            RENDER_MAX_SIZE="128",
            **RENDER_ENV,
            **extra,
        )
        worker_port = free_port()
        worker = start_celery_worker(
            log_dir,
            "speech,render",
            f"{name}-worker",
            env={**env, "WORKER_METRICS_ADDR": f"127.0.0.1:{worker_port}"},
            concurrency=2,
            app_env=env,
        )
        try:
            web, port = start_daphne(log_dir, env, name=f"daphne-{name}")
            try:
                yield Stack(env, web, port, worker, worker_port, log_dir)
            finally:
                web.stop()
        finally:
            worker.stop()


# --- turns over a real WebSocket ---------------------------------------------------------------


async def open_session(port: int, query: str) -> Client:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/{query}", max_size=None)
    client = Client(ws)
    client.init = await client.until("init")
    return client


async def text_turn(client: Client, text: str) -> dict[str, Any]:
    await client.send(type="text_message", text=text)
    response = await client.until("text_response", timeout=30, fail_on_error=True)
    await client.until("tts_complete", timeout=30, fail_on_error=True)
    return response


async def upload_turn(client: Client) -> dict[str, Any]:
    await client.ws.send(speak(UTTERANCE).read_bytes())
    asr = await client.until("asr_result", timeout=60, fail_on_error=True)
    while True:
        event = await client.until("turn_progress", timeout=60, fail_on_error=True)
        if event["step"] == "synthesize" and event["state"] == "done":
            return asr
