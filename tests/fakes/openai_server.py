"""A loopback OpenAI-compatible chat completions endpoint (`POST /v1/chat/completions`).

Streams `data: {chunk}` events and `data: [DONE]` like vLLM or Ollama do; scripted and
recorded like the DashScope fake (`server.behaviour`, `server.received`):

    server = OpenAIServer().start()      # base URL: server.base_url (…/v1)
    server.behaviour.first_token_delay = 0.2
    server.behaviour.fault = Fault("http", 429, "rate_limit_exceeded")
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.dashscope_server import Fault, LoopbackServer, Received, words


@dataclass
class Behaviour:
    reply: str | None = None  # None: "You said: <last user message>. I am a fake model."
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    fault: Fault | None = None  # "http", "midstream", "drop" or "hang"


class OpenAIServer(LoopbackServer):
    def __init__(self, api_key: str = "sk-fake-openai-7c4a8d09ca3762af") -> None:
        super().__init__()
        self.api_key = api_key
        self.behaviour = Behaviour()
        self.received: list[Received] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.completions)

    @staticmethod
    def _error(status: int, code: str, message: str, kind: str = "server_error") -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": kind, "code": code}}, status=status
        )

    def _chunk(
        self, model: str, completion_id: str, delta: dict[str, Any], finish: str | None
    ) -> bytes:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        item = Received(
            service="llm",
            authorization=request.headers.get("Authorization", ""),
            headers=dict(request.headers),
        )
        self.received.append(item)
        item.payload = await request.json()
        scheme, _, key = item.authorization.partition(" ")
        if scheme.lower() != "bearer" or key != self.api_key:
            # Like the real API, the message names the rejected key.
            return self._error(
                401,
                "invalid_api_key",
                f"Incorrect API key provided: {key}",
                "invalid_request_error",
            )
        fault = self.behaviour.fault
        if fault and fault.kind == "http":
            return self._error(fault.status, fault.code, fault.message)
        if fault and fault.kind == "hang":
            await self.hang()
            return web.Response(status=504)
        model = item.payload.get("model", "")
        messages = item.payload.get("messages", [])
        said = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        reply = self.behaviour.reply
        if reply is None:
            reply = f"You said: {said}. I am a fake model. Ask me more!"
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        if not item.payload.get("stream"):
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(self.behaviour.first_token_delay)
        await response.write(
            self._chunk(model, completion_id, {"role": "assistant", "content": ""}, None)
        )
        for index, piece in enumerate(words(reply), start=1):
            if fault and index == 3 and fault.kind == "drop":
                self.drop(request)
                return response
            if fault and index == 3 and fault.kind == "midstream":
                error = {
                    "error": {"message": fault.message, "type": "server_error", "code": fault.code}
                }
                await response.write(f"data: {json.dumps(error)}\n\n".encode())
                await response.write_eof()
                return response
            if index > 1:
                await asyncio.sleep(self.behaviour.token_delay)
            await response.write(self._chunk(model, completion_id, {"content": piece}, None))
        await response.write(self._chunk(model, completion_id, {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
