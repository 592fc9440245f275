"""Qwen through DashScope: `dashscope.AioGeneration` streaming with incremental output.

The SDK's asyncio client runs on the event loop itself: no worker thread, no hand-over per
piece; its HTTP session is the loop's (`dashscope_http_session`), so replies reuse kept-alive
connections and no request waits for an executor thread.
HTTP errors come back as responses (not raised); both they and network exceptions become
`LLMError`. The wait for each piece, the first included, is bounded by the connect and the
read timeouts together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from dashscope import AioGeneration
from django.conf import settings

from chat.providers.base import ChatTurn, LLMError, LLMProvider
from chat.providers.cloud import (
    configure_dashscope,
    dashscope_http_session,
    failure,
    timed_out,
)
from chat.providers.llm import chat_messages

WHAT = "DashScope LLM"


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
    def preload(cls) -> None:
        from dashscope.api_entities.aio_session import get_ssl_context

        get_ssl_context()  # the CA certificates of the loop's HTTP session (~50 ms of CPU)

    @classmethod
    def from_settings(cls) -> DashScopeLLM:
        return cls(
            settings.DASHSCOPE_LLM_MODEL,
            settings.PROVIDER_TIMEOUT_S,
            settings.PROVIDER_CONNECT_TIMEOUT_S,
            settings.LLM_MAX_HISTORY,
        )

    async def stream_reply(self, turn: ChatTurn) -> AsyncIterator[str]:
        key = configure_dashscope()
        wait = self.timeout_s + self.connect_timeout_s
        responses: Any = None
        try:
            async with asyncio.timeout(wait) as deadline:
                responses = await AioGeneration.call(
                    model=self.model,
                    messages=chat_messages(turn, self.max_history),
                    result_format="message",
                    stream=True,
                    incremental_output=True,
                    api_key=key,
                    session=dashscope_http_session(),
                    request_timeout=self.timeout_s,  # the SDK's longest wait between pieces
                )
                async for response in responses:
                    if response.status_code != HTTPStatus.OK:
                        raise failure(
                            LLMError,
                            WHAT,
                            status=response.status_code,
                            code=response.code,
                            message=response.message,
                            secrets=(key,),
                        )
                    piece = response.output.choices[0].message.content
                    deadline.reschedule(None)  # the consumer's time is not the provider's
                    if isinstance(piece, str) and piece:
                        yield piece
                    deadline.reschedule(asyncio.get_running_loop().time() + wait)
        except LLMError:
            raise
        except TimeoutError:
            raise timed_out(LLMError, WHAT, wait) from None
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes LLMError
            raise failure(LLMError, WHAT, exc=exc, secrets=(key,)) from None
        finally:
            if responses is not None:  # an abandoned stream gives its connection back now
                with contextlib.suppress(Exception):
                    await responses.aclose()
