"""Qwen through DashScope: `dashscope.Generation` streaming with incremental output.

The SDK's HTTP client is blocking, so the call runs on a worker thread and each piece reaches
the event loop through a `ThreadBridge`. HTTP errors come back as responses (not raised); both
they and network exceptions become `LLMError`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from dashscope import Generation
from django.conf import settings

from chat.providers.base import ChatTurn, LLMError, LLMProvider
from chat.providers.bridge import ThreadBridge, spawn
from chat.providers.cloud import configure_dashscope, failure, timed_out
from chat.providers.llm import chat_messages


class DashScopeLLM(LLMProvider):
    name = "dashscope"

    def __init__(
        self, model: str, timeout_s: float, connect_timeout_s: float, max_history: int
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_history = max_history

    @classmethod
    def from_settings(cls) -> DashScopeLLM:
        return cls(
            settings.DASHSCOPE_LLM_MODEL,
            settings.PROVIDER_TIMEOUT_S,
            settings.PROVIDER_CONNECT_TIMEOUT_S,
            settings.LLM_MAX_HISTORY,
        )

    def _generate(
        self, messages: list[dict[str, str]], bridge: ThreadBridge[str], stop: threading.Event
    ) -> None:
        """Worker thread: run the streaming call and post each new piece."""
        key = configure_dashscope()
        try:
            responses: Any = Generation.call(
                model=self.model,
                messages=messages,
                result_format="message",
                stream=True,
                incremental_output=True,
                api_key=key,
                # requests: connect bound, then the longest wait for the next piece.
                request_timeout=(self.connect_timeout_s, self.timeout_s),
            )
            for response in responses:
                if stop.is_set():
                    return
                if response.status_code != HTTPStatus.OK:
                    bridge.fail(
                        failure(
                            LLMError,
                            "DashScope LLM",
                            status=response.status_code,
                            code=response.code,
                            message=response.message,
                            secrets=(key,),
                        )
                    )
                    return
                choice = response.output.choices[0]
                piece = choice.message.content
                if isinstance(piece, str) and piece:
                    bridge.put(piece)
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes LLMError
            bridge.fail(failure(LLMError, "DashScope LLM", exc=exc, secrets=(key,)))
            return
        bridge.end()

    async def stream_reply(self, turn: ChatTurn) -> AsyncIterator[str]:
        bridge: ThreadBridge[str] = ThreadBridge()
        stop = threading.Event()
        messages = chat_messages(turn, self.max_history)
        spawn(self._generate, messages, bridge, stop, name="dashscope-llm")
        wait = self.timeout_s + self.connect_timeout_s
        try:
            async for piece in bridge.iterate(
                wait, lambda: timed_out(LLMError, "DashScope LLM", wait)
            ):
                yield piece
        finally:
            stop.set()
