"""Fixtures of the providers tests (registered in tests/conftest.py).

`dashscope_server` / `openai_server` are loopback fakes started once per run; `dashscope` and
`openai_llm` give each test a fresh script (`server.behaviour`), empty records
(`server.received`) and settings pointing the backends at the fake, with short timeouts.
Benchmarks can use the same servers with delays, e.g.:

    def test_turn(dashscope):
        dashscope.behaviour.first_token_delay = 0.3
        dashscope.behaviour.tts_first_chunk_delay = 0.1
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chat.providers.registry import reset_providers
from tests.fakes.dashscope_server import DashScopeServer
from tests.fakes.openai_server import OpenAIServer

# Short enough to keep failing tests fast, long enough for a loaded 2-core machine.
TEST_TIMEOUT_S = 5.0
TEST_CONNECT_TIMEOUT_S = 2.0


@pytest.fixture(scope="session")
def dashscope_server() -> Iterator[DashScopeServer]:
    server = DashScopeServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openai_server() -> Iterator[OpenAIServer]:
    server = OpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def offline_providers(settings: Any) -> Iterator[None]:
    """The offline defaults (pocketsphinx, persona, espeak), whatever the environment says."""
    settings.ASR_BACKEND = "pocketsphinx"
    settings.LLM_BACKEND = "persona"
    settings.TTS_BACKEND = "espeak"
    settings.PROVIDER_TIMEOUT_S = 30.0
    reset_providers()
    yield
    reset_providers()


@pytest.fixture
def dashscope(settings: Any, dashscope_server: DashScopeServer) -> Iterator[DashScopeServer]:
    """Every stage on the `dashscope` backend, talking to the loopback DashScope."""
    dashscope_server.reset()
    settings.DASHSCOPE_API_KEY = dashscope_server.api_key
    settings.DASHSCOPE_HTTP_BASE_URL = dashscope_server.http_base_url
    settings.DASHSCOPE_WEBSOCKET_BASE_URL = dashscope_server.websocket_url
    settings.ASR_BACKEND = "dashscope"
    settings.LLM_BACKEND = "dashscope"
    settings.TTS_BACKEND = "dashscope"
    settings.PROVIDER_TIMEOUT_S = TEST_TIMEOUT_S
    settings.PROVIDER_CONNECT_TIMEOUT_S = TEST_CONNECT_TIMEOUT_S
    reset_providers()
    yield dashscope_server
    reset_providers()
    dashscope_server.reset()


@pytest.fixture
def openai_llm(settings: Any, openai_server: OpenAIServer) -> Iterator[OpenAIServer]:
    """The `openai` LLM backend talking to the loopback OpenAI-compatible server."""
    openai_server.reset()
    settings.LLM_BACKEND = "openai"
    settings.LLM_BASE_URL = openai_server.base_url
    settings.LLM_MODEL = "fake-model"
    settings.LLM_API_KEY = openai_server.api_key
    settings.PROVIDER_TIMEOUT_S = TEST_TIMEOUT_S
    settings.PROVIDER_CONNECT_TIMEOUT_S = TEST_CONNECT_TIMEOUT_S
    reset_providers()
    yield openai_server
    reset_providers()
    openai_server.reset()
