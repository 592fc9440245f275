"""Any OpenAI-compatible chat endpoint (vLLM, Ollama, DeepSeek, DashScope compatible mode).

The `openai` client is natively async; one client per event loop, because its connection
pool belongs to the loop that opened it. The client's own retries are off: the pipeline
decides about retrying from the error's `retryable` flag.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from chat.providers.base import ChatTurn, LLMError, LLMProvider
from chat.providers.cloud import failure, guard_secrets, timed_out
from chat.providers.llm import chat_messages

WHAT = "OpenAI-compatible LLM"


class OpenAILLM(LLMProvider):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        timeout_s: float,
        connect_timeout_s: float,
        max_history: int,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        guard_secrets(api_key)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_history = max_history
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_settings(cls) -> OpenAILLM:
        return cls(
            settings.LLM_BASE_URL,
            settings.LLM_MODEL,
            settings.LLM_API_KEY,
            settings.PROVIDER_TIMEOUT_S,
            settings.PROVIDER_CONNECT_TIMEOUT_S,
            settings.LLM_MAX_HISTORY,
        )

    def _client(self) -> Any:
        import httpx
        import openai

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=self.base_url,
                # Local servers (vLLM, Ollama) need no key, but the client insists on one.
                api_key=self.api_key or "none",
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                max_retries=0,
            )
            self._clients[loop] = client
        return client

    def _error(self, exc: Exception) -> LLMError:
        import httpx
        import openai

        secrets = (self.api_key,)
        if isinstance(exc, openai.APITimeoutError):
            return timed_out(LLMError, WHAT, self.timeout_s)
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            code = body.get("code") or body.get("type")
            return failure(
                LLMError,
                WHAT,
                status=exc.status_code,
                code=code,
                message=exc.message,
                secrets=secrets,
            )
        if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIConnectionError):
            # An error event in the middle of the stream: the server's own failure.
            body = exc.body if isinstance(exc.body, dict) else {}
            code = str(body.get("code") or body.get("type") or "stream_error")
            return failure(
                LLMError, WHAT, status=500, code=code, message=exc.message, secrets=secrets
            )
        connection = isinstance(exc, (openai.APIConnectionError, httpx.TransportError))
        return failure(LLMError, WHAT, exc=exc, secrets=secrets, retryable=connection)

    async def stream_reply(self, turn: ChatTurn) -> AsyncIterator[str]:
        import httpx
        import openai

        try:
            stream = await self._client().chat.completions.create(
                model=self.model, messages=chat_messages(turn, self.max_history), stream=True
            )
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise self._error(exc) from None
