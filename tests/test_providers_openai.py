"""The OpenAI-compatible LLM backend running the real `openai` client against a loopback server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from chat.providers import get_llm
from chat.providers.base import ChatTurn, LLMError
from chat.providers.text import stream_sentences
from tests.fakes.dashscope_server import Fault
from tests.fakes.openai_server import OpenAIServer

TURN = ChatTurn(
    persona="你是林晓，一位耐心的中文口语老师。",
    history=[{"role": "user", "content": "How do I say thank you?"}],
    avatar_name="Lin Xiao",
    language="zh-CN",
)


async def _pieces() -> list[str]:
    return [piece async for piece in get_llm().stream_reply(TURN)]


def test_streams_the_reply_piece_by_piece(openai_llm: OpenAIServer) -> None:
    pieces = asyncio.run(_pieces())
    assert len(pieces) > 3
    assert "".join(pieces) == "You said: How do I say thank you?. I am a fake model. Ask me more!"


def test_sends_model_persona_history_and_key(openai_llm: OpenAIServer) -> None:
    asyncio.run(_pieces())
    (request,) = openai_llm.received
    assert request.authorization == f"Bearer {openai_llm.api_key}"
    assert request.payload["model"] == "fake-model"
    assert request.payload["stream"] is True
    system, user = request.payload["messages"]
    assert system["role"] == "system" and system["content"].startswith("你是林晓")
    assert "Mandarin" in system["content"]
    assert user == {"role": "user", "content": "How do I say thank you?"}


def test_reply_is_spoken_sentence_by_sentence(openai_llm: OpenAIServer) -> None:
    openai_llm.behaviour.reply = "你好！我是林晓。我们开始吧"

    async def sentences() -> list[str]:
        return [s async for s in stream_sentences(get_llm().stream_reply(TURN))]

    assert asyncio.run(sentences()) == ["你好！", "我是林晓。", "我们开始吧"]


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [
        (Fault("http", 400, "invalid_request", "messages must not be empty"), False),
        (Fault("http", 404, "model_not_found", "no such model"), False),
        (Fault("http", 429, "rate_limit_exceeded", "slow down"), True),
        (Fault("http", 500, "server_error", "boom"), True),
        (Fault("http", 503, "overloaded", "busy"), True),
        (Fault("midstream", 500, "server_error", "broke mid-way"), True),
        (Fault("drop"), True),
    ],
)
def test_failures_map_to_llm_error(
    openai_llm: OpenAIServer, fault: Fault, retryable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    openai_llm.behaviour.fault = fault
    with caplog.at_level(logging.DEBUG), pytest.raises(LLMError) as caught:
        asyncio.run(_pieces())
    assert caught.value.code == "ERR_LLM_FAILED"
    assert caught.value.retryable is retryable
    if fault.kind in ("http", "midstream"):
        assert fault.message in caught.value.provider_message
    assert openai_llm.api_key not in caplog.text


def test_wrong_key_is_not_retryable_and_never_logged(
    openai_llm: OpenAIServer, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-openai-key-0123456789"
    settings.LLM_API_KEY = wrong
    with caplog.at_level(logging.DEBUG), pytest.raises(LLMError) as caught:
        asyncio.run(_pieces())
    assert caught.value.retryable is False
    assert "401" in str(caught.value)
    assert openai_llm.received[0].authorization == f"Bearer {wrong}"
    assert wrong not in str(caught.value)
    assert wrong not in caught.value.provider_message
    assert wrong not in caplog.text


def test_timeout_is_bounded_by_settings(openai_llm: OpenAIServer, settings: Any) -> None:
    settings.PROVIDER_TIMEOUT_S = 0.5
    openai_llm.behaviour.fault = Fault("hang")
    with pytest.raises(LLMError) as caught:
        asyncio.run(_pieces())
    assert caught.value.retryable is True
    assert "timed out" in str(caught.value)


def test_unreachable_endpoint_is_retryable(openai_llm: OpenAIServer, settings: Any) -> None:
    settings.LLM_BASE_URL = "http://127.0.0.1:9/v1"
    with pytest.raises(LLMError) as caught:
        asyncio.run(_pieces())
    assert caught.value.retryable is True


def test_one_backend_serves_successive_event_loops(openai_llm: OpenAIServer) -> None:
    """Celery tasks and tests run each turn in a fresh loop; the client must not be stale."""
    assert asyncio.run(get_llm().reply(TURN)) == asyncio.run(get_llm().reply(TURN))
