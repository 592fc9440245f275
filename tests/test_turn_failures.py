"""A provider failing mid-turn: the client gets the stage's error code, the failed message keeps
its error in the history, and the session goes on. A separate stack (own Redis database, web
process and worker) runs with an LLM endpoint that refuses connections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from chat.models import Message
from tests.audio import speak
from tests.fixtures_sessions import Client, run, separate_stack

pytestmark = pytest.mark.usefixtures("live_avatars")


@pytest.fixture(scope="module")
def broken_llm_stack(django_db_setup: None, log_dir: Path) -> Iterator[str]:
    with separate_stack(
        log_dir,
        "broken-llm",
        LLM_BACKEND="openai",
        LLM_BASE_URL="http://127.0.0.1:9/v1",  # nothing listens on the discard port
        LLM_MODEL="any",
        PROVIDER_TIMEOUT_S="3",
    ) as url:
        yield url


def test_llm_failure_mid_chain_reaches_the_client_and_the_session_goes_on(
    broken_llm_stack: str,
) -> None:
    async def body() -> Client:
        async with websockets.connect(broken_llm_stack, max_size=None) as ws:
            client = Client(ws)
            init = await client.recv()
            client.session_id = init["session_id"]
            await ws.send(speak("what is the weather like in london").read_bytes())
            client.failure = await client.until("error", timeout=60)
            await client.send(type="ping", timestamp=5)
            await client.until("pong")
            await client.send(type="text_message", text="Are you there?", id="again")
            client.second = await client.until("error", timeout=60)
            await client.send(type="ping", timestamp=6)
            await client.until("pong")
            return client

    client = run(body(), timeout=150)
    assert client.of("asr_result") and "london" in client.of("asr_result")[0]["text"]
    assert client.failure["code"] == "ERR_LLM_FAILED" and client.failure["retryable"] is True
    assert client.second["code"] == "ERR_LLM_FAILED" and client.second["ref"] == "again"
    assert client.of("tts_start") == []
    failed = Message.objects.filter(session_id=client.session_id, role="assistant")
    assert failed.count() == 2 and all(m.error_code == "ERR_LLM_FAILED" for m in failed)
    user = Message.objects.filter(session_id=client.session_id, role="user").first()
    assert "london" in user.text and user.error_code == ""
