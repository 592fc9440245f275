"""A loopback DashScope: the HTTP/SSE and WebSocket protocols the real SDK speaks, on 127.0.0.1.

Tests (and benchmarks) point `dashscope.base_http_api_url` / `base_websocket_api_url` at it
and run the real SDK. What it answers is scripted through `server.behaviour` (reply text,
transcript, delays, one `Fault` per service), and everything it receives is recorded in
`server.received` (the Authorization header, the payloads, the audio byte count, the texts),
so tests can assert that the SDK really sent the key and the audio.

    server = DashScopeServer().start()
    server.behaviour.first_token_delay = 0.2          # LLM: before the first SSE event
    server.behaviour.llm_fault = Fault("http", 500)   # or "midstream", "drop", "hang"
    server.behaviour.tts_fault = Fault("task-failed", code="InvalidParameter")
    server.behaviour.voice_ready_after = 1.0          # a cloned voice is DEPLOYING this long
    ...
    server.stop()
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

FaultKind = Literal["http", "midstream", "task-failed", "drop", "hang", "heartbeats"]
HANG_S = 120.0


@dataclass
class Fault:
    """How a service misbehaves.

    - "http": answer with HTTP `status` and `{"code", "message"}` (for websockets: refuse the
      handshake with `status`).
    - "midstream": stream two pieces, then an SSE `event:error` (HTTP LLM only).
    - "task-failed": websocket `task-failed` event with `code` and `message` right after run-task.
    - "drop": cut the TCP connection after the first pieces (SSE) or the first audio.
    - "hang": accept the request and never answer.
    - "heartbeats": stream two pieces, then only SSE heartbeats (comment lines), every 0.1 s,
      never the rest (HTTP LLM only): the connection stays busy, the reply never comes.
    """

    kind: FaultKind
    status: int = 500
    code: str = "InternalError"
    message: str = "the fake server was told to fail"


@dataclass
class Behaviour:
    """The script the server follows; tests change fields, `reset()` restores the defaults."""

    # None: "You said: <last user message>. I am a fake Qwen."; a callable: its answer to the
    # request's messages
    reply: str | Callable[[list[dict[str, str]]], str] | None = None
    transcript: str = "hello world how are you"
    file_transcript: str = "hello from the uploaded file"
    first_token_delay: float = 0.0  # LLM: seconds before the first piece
    token_delay: float = 0.0  # LLM: seconds between pieces
    asr_result_delay: float = 0.0  # ASR: seconds before each result message
    asr_interim_every_bytes: int = 6400  # ASR: an interim result per this much audio
    tts_first_chunk_delay: float = 0.0  # TTS: seconds before the first audio chunk
    tts_chunk_delay: float = 0.0  # TTS: seconds between chunks
    tts_seconds_per_char: float = 0.06  # TTS: audio length per character of text
    llm_fault: Fault | None = None
    file_asr_fault: Fault | None = None
    asr_fault: Fault | None = None
    tts_fault: Fault | None = None
    ws_handshake_status: int | None = None  # refuse every websocket handshake with this status
    # TTS: before task-started, an event of another task (a late one of the connection's last)
    tts_stray_event: str | None = None
    voice_ready_after: float = 0.0  # voices: seconds a created voice stays DEPLOYING
    voice_rejection: str | None = None  # voices: a created voice ends UNDEPLOYED with this
    voice_fault: Fault | None = None  # voices: "http" or "hang" on every customization call


@dataclass
class Received:
    """One request or websocket task as the server saw it."""

    service: str  # "llm", "file-asr", "asr", "tts", "voice" ("ws" until run-task names the task)
    authorization: str
    headers: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)
    audio_bytes: int = 0
    audio_frames: int = 0  # binary websocket messages (ASR)
    texts: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)  # request or handshake
    started_at: float | None = None  # websocket: when the first message (run-task) came
    close_code: int | None = None  # ASR websocket: how the client closed it (1000: cleanly)
    abandoned: bool = False  # LLM stream: the client went away before its last piece
    connection: int = 0  # websocket: which connection (1, 2, ...) the task ran on


@dataclass
class ClonedVoice:
    """A voice enrolled through the customization endpoint, as the fake keeps it."""

    voice_id: str
    target_model: str
    prefix: str
    url: str
    language_hints: list[str]
    ready_after: float  # seconds DEPLOYING after creation (or after an update)
    rejection: str | None  # ends UNDEPLOYED with this instead of OK
    created: float = field(default_factory=time.monotonic)
    gmt_create: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    gmt_modified: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    @property
    def status(self) -> str:
        if time.monotonic() - self.created < self.ready_after:
            return "DEPLOYING"
        return "UNDEPLOYED" if self.rejection else "OK"


class LoopbackServer:
    """An aiohttp application on 127.0.0.1 in a background thread with its own event loop;
    over TLS with the server context `tls`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self) -> LoopbackServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def setup() -> None:
            self._stopping = asyncio.Event()
            app = web.Application()
            self.routes(app)
            self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
            await site.start()
            self.port = self._runner.addresses[0][1]

        def run() -> None:
            assert self._loop
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(setup())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if not self._loop or not self._thread:
            return

        async def cleanup() -> None:
            assert self._stopping and self._runner
            self._stopping.set()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def hang(self) -> None:
        """Never answer (until the server stops)."""
        assert self._stopping
        try:
            await asyncio.wait_for(self._stopping.wait(), HANG_S)
        except TimeoutError:
            pass

    @staticmethod
    def drop(request: web.Request) -> None:
        """Cut the connection without a word, as a crashed server or a broken network would."""
        if request.transport is not None:
            request.transport.abort()


async def until(due: float) -> None:
    """Sleep until the loop's clock reaches `due` (at once when it already has)."""
    await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))


def words(text: str) -> list[str]:
    """Word-sized pieces with their trailing space, like a model's token deltas."""
    return re.findall(r"\S+\s*", text) or [text]


@functools.lru_cache(maxsize=64)
def tone(seconds: float, sample_rate: int = 22050) -> bytes:
    """A quiet 220 Hz tone as PCM16: audible, non-silent, deterministic."""
    n = int(seconds * sample_rate)
    return struct.pack(
        f"<{n}h", *(int(3000 * math.sin(2 * math.pi * 220 * i / sample_rate)) for i in range(n))
    )


class DashScopeServer(LoopbackServer):
    def __init__(
        self, api_key: str = "sk-fake-dashscope-5d41402abc4b2a76", tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(tls)
        self.api_key = api_key
        self.behaviour = Behaviour()
        self.received: list[Received] = []
        # open and waiting for a run-task, with their connection numbers
        self._idle: dict[web.WebSocketResponse, int] = {}
        self.connections = 0  # websockets accepted so far
        self.voices: dict[str, ClonedVoice] = {}  # cloned voices by id (survive reset())
        self.deleted_voices: list[str] = []

    @property
    def http_base_url(self) -> str:
        return f"http{'s' if self.tls else ''}://127.0.0.1:{self.port}/api/v1"

    @property
    def websocket_url(self) -> str:
        return f"ws{'s' if self.tls else ''}://127.0.0.1:{self.port}/api-ws/v1/inference"

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()
        self.connections = 0

    def forget_voices(self) -> None:
        """Drop every cloned voice, as if deleted at the service (not recorded as deleted)."""
        self.voices.clear()
        self.deleted_voices.clear()

    def of(self, service: str) -> list[Received]:
        return [item for item in self.received if item.service == service]

    @property
    def idle_connections(self) -> int:
        """Websockets open and waiting for a run-task (opened ahead, or done with a task)."""
        return len(self._idle)

    def close_idle(self) -> set[int]:
        """Close every idle websocket, as the service does with connections left unused; the
        numbers of the connections closed."""
        assert self._loop

        async def close() -> set[int]:
            closed = set()
            for ws, connection in list(self._idle.items()):
                closed.add(connection)
                await ws.close()
            return closed

        return asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/services/aigc/text-generation/generation", self.generation)
        app.router.add_post(
            "/api/v1/services/aigc/multimodal-generation/generation", self.multimodal
        )
        app.router.add_post("/api/v1/services/audio/tts/customization", self.customization)
        app.router.add_get("/api-ws/v1/inference", self.inference)
        app.router.add_get("/api-ws/v1/inference/", self.inference)

    # --- helpers ------------------------------------------------------------------------------
    def _record(self, service: str, request: web.Request) -> Received:
        item = Received(
            service=service,
            authorization=request.headers.get("Authorization", ""),
            headers=dict(request.headers),
        )
        self.received.append(item)
        return item

    def _authorized(self, item: Received) -> bool:
        scheme, _, key = item.authorization.partition(" ")
        return scheme.lower() == "bearer" and key == self.api_key

    def _unauthorized(self, item: Received) -> web.Response:
        given = item.authorization.partition(" ")[2]
        # The real service names the key it rejected: clients must keep it out of their logs.
        return web.json_response(
            {
                "code": "InvalidApiKey",
                "message": f"Invalid API-key provided: {given}",
                "request_id": uuid.uuid4().hex,
            },
            status=401,
        )

    @staticmethod
    def _error(fault: Fault) -> web.Response:
        return web.json_response(
            {"code": fault.code, "message": fault.message, "request_id": uuid.uuid4().hex},
            status=fault.status,
        )

    def _reply_for(self, payload: dict[str, Any]) -> str:
        messages = payload.get("input", {}).get("messages", [])
        if callable(self.behaviour.reply):
            return self.behaviour.reply(messages)
        if self.behaviour.reply is not None:
            return self.behaviour.reply
        said = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        return f"You said: {said}. I am a fake Qwen. Ask me more!"

    # --- HTTP ---------------------------------------------------------------------------------
    async def _refuse(self, item: Any, fault: Fault | None) -> web.StreamResponse | None:
        """The answer to a request refused for its key or by an http/hang fault, else None."""
        if not self._authorized(item):
            return self._unauthorized(item)
        if fault and fault.kind == "http":
            return self._error(fault)
        if fault and fault.kind == "hang":
            await self.hang()
            return web.Response(status=504)
        return None

    async def generation(self, request: web.Request) -> web.StreamResponse:
        item = self._record("llm", request)
        item.payload = await request.json()
        fault = self.behaviour.llm_fault
        refused = await self._refuse(item, fault)
        if refused is not None:
            return refused
        reply = self._reply_for(item.payload)
        request_id = uuid.uuid4().hex
        if request.headers.get("X-DashScope-SSE", "").lower() != "enable":
            return web.json_response(
                {
                    "output": {
                        "choices": [
                            {
                                "message": {"role": "assistant", "content": reply},
                                "finish_reason": "stop",
                            }
                        ]
                    },
                    "usage": {"input_tokens": 10, "output_tokens": len(words(reply))},
                    "request_id": request_id,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream;charset=UTF-8"})
        await response.prepare(request)
        # Pieces leave on a fixed schedule from the request (no drift from sleeps adding up), so
        # a benchmark's provider time is exactly first_token_delay + (n - 1) * token_delay.
        due = asyncio.get_running_loop().time() + self.behaviour.first_token_delay
        await until(due)
        pieces = words(reply)
        for index, piece in enumerate(pieces, start=1):
            if fault and index == 3 and fault.kind == "heartbeats":
                await self._heartbeats(item, response)
                return response
            if fault and index == 3 and fault.kind in ("midstream", "drop"):
                if fault.kind == "drop":
                    self.drop(request)
                    return response
                body = {"code": fault.code, "message": fault.message, "request_id": request_id}
                await response.write(
                    f"id:{index}\nevent:error\n:HTTP_STATUS/{fault.status}\n"
                    f"data:{json.dumps(body)}\n\n".encode()
                )
                return response
            if index > 1:
                due += self.behaviour.token_delay
                await until(due)
            last = index == len(pieces)
            data = {
                "output": {
                    "choices": [
                        {
                            "message": {"role": "assistant", "content": piece},
                            "finish_reason": "stop" if last else "null",
                        }
                    ]
                },
                "usage": {"input_tokens": 10, "output_tokens": index},
                "request_id": request_id,
            }
            try:
                await response.write(
                    f"id:{index}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(data)}\n\n".encode()
                )
            except ConnectionResetError:
                item.abandoned = True
                return response
        await response.write_eof()
        return response

    async def _heartbeats(self, item: Received, response: web.StreamResponse) -> None:
        """Heartbeats only, until the client goes away or the server stops."""
        assert self._stopping
        deadline = asyncio.get_running_loop().time() + HANG_S
        while not self._stopping.is_set() and asyncio.get_running_loop().time() < deadline:
            try:
                await response.write(b":heartbeat\n\n")
            except ConnectionResetError:
                item.abandoned = True
                return
            await asyncio.sleep(0.1)

    async def multimodal(self, request: web.Request) -> web.StreamResponse:
        item = self._record("file-asr", request)
        item.payload = await request.json()
        fault = self.behaviour.file_asr_fault
        refused = await self._refuse(item, fault)
        if refused is not None:
            return refused
        if fault and fault.kind == "drop":
            self.drop(request)
            return web.Response()
        text = self.behaviour.file_transcript
        return web.json_response(
            {
                "output": {
                    "choices": [
                        {
                            "message": {"role": "assistant", "content": [{"text": text}]},
                            "finish_reason": "stop",
                        }
                    ]
                },
                "usage": {"seconds": 2},
                "request_id": uuid.uuid4().hex,
            }
        )

    # --- voice enrolment (CosyVoice voice cloning) ----------------------------------------------
    _PREFIX = re.compile(r"[a-z0-9]{1,9}")

    @staticmethod
    def _voice_error(status: int, code: str, message: str) -> web.Response:
        return DashScopeServer._error(Fault("http", status, code, message))

    async def customization(self, request: web.Request) -> web.Response:
        """`services/audio/tts/customization`: create, query, list, update and delete voices.

        Requests are `{"model": "voice-enrollment", "input": {"action": ..., ...}}`; answers
        `{"output": ..., "usage": ..., "request_id"}` or `{"code", "message"}` with an HTTP error
        status. A created voice is DEPLOYING for `voice_ready_after` seconds, then OK (or
        UNDEPLOYED with `voice_rejection`). An unknown voice id is a 404 `ResourceNotFound`. The
        reason in an UNDEPLOYED voice's `message` is this fake's: clients must not rely on it.
        """
        item = self._record("voice", request)
        try:
            item.payload = await request.json()
        except ValueError:
            return self._voice_error(400, "InvalidParameter", "the body is not JSON")
        refused = await self._refuse(item, self.behaviour.voice_fault)
        if refused is not None:
            return refused
        if item.payload.get("model") != "voice-enrollment":
            return self._voice_error(400, "ModelNotFound", "Model not exist.")
        data = item.payload.get("input") or {}
        action = str(data.get("action", ""))
        item.actions.append(action)
        handler = {
            "create_voice": self._create_voice,
            "query_voice": self._query_voice,
            "list_voice": self._list_voices,
            "update_voice": self._update_voice,
            "delete_voice": self._delete_voice,
        }.get(action)
        if handler is None:
            return self._voice_error(400, "InvalidParameter", f"unknown action: {action!r}")
        outcome = handler(data)
        if isinstance(outcome, web.Response):
            return outcome
        return web.json_response(
            {"output": outcome, "usage": {"count": 1}, "request_id": uuid.uuid4().hex}
        )

    def _voice_of(self, data: dict[str, Any]) -> ClonedVoice | web.Response:
        voice_id = str(data.get("voice_id", ""))
        voice = self.voices.get(voice_id)
        if voice is None:
            return self._voice_error(404, "ResourceNotFound", f"voice not found: {voice_id}")
        return voice

    @staticmethod
    def _bad_url(url: object) -> bool:
        return not isinstance(url, str) or not url.startswith(("http://", "https://"))

    def _create_voice(self, data: dict[str, Any]) -> dict[str, Any] | web.Response:
        prefix, url = str(data.get("prefix", "")), data.get("url")
        target = str(data.get("target_model", ""))
        if not target.startswith("cosyvoice-"):
            return self._voice_error(
                400, "InvalidParameter", f"unsupported target_model {target!r}"
            )
        if not self._PREFIX.fullmatch(prefix):
            return self._voice_error(
                400, "InvalidParameter", "prefix: digits and lowercase letters, under 10"
            )
        if self._bad_url(url):
            return self._voice_error(400, "InvalidParameter", "url must be a public http(s) URL")
        voice_id = f"{target}-{prefix}-{uuid.uuid4().hex[:24]}"
        self.voices[voice_id] = ClonedVoice(
            voice_id,
            target,
            prefix,
            str(url),
            list(data.get("language_hints") or []),
            self.behaviour.voice_ready_after,
            self.behaviour.voice_rejection,
        )
        return {"voice_id": voice_id}

    def _query_voice(self, data: dict[str, Any]) -> dict[str, Any] | web.Response:
        voice = self._voice_of(data)
        if isinstance(voice, web.Response):
            return voice
        answer = {
            "gmt_create": voice.gmt_create,
            "gmt_modified": voice.gmt_modified,
            "resource_link": voice.url,
            "target_model": voice.target_model,
            "status": voice.status,
        }
        if voice.status == "UNDEPLOYED":
            answer["message"] = voice.rejection
        return answer

    def _list_voices(self, data: dict[str, Any]) -> dict[str, Any]:
        prefix = data.get("prefix")
        index, size = int(data.get("page_index") or 0), int(data.get("page_size") or 10)
        found = [v for v in self.voices.values() if not prefix or v.prefix == prefix]
        page = found[index * size : (index + 1) * size]
        return {
            "voice_list": [
                {
                    "voice_id": v.voice_id,
                    "gmt_create": v.gmt_create,
                    "gmt_modified": v.gmt_modified,
                    "status": v.status,
                }
                for v in page
            ]
        }

    def _update_voice(self, data: dict[str, Any]) -> dict[str, Any] | web.Response:
        voice = self._voice_of(data)
        if isinstance(voice, web.Response):
            return voice
        if self._bad_url(data.get("url")):
            return self._voice_error(400, "InvalidParameter", "url must be a public http(s) URL")
        voice.url, voice.created = str(data["url"]), time.monotonic()
        voice.ready_after, voice.rejection = (
            self.behaviour.voice_ready_after,
            self.behaviour.voice_rejection,
        )
        return {}

    def _delete_voice(self, data: dict[str, Any]) -> dict[str, Any] | web.Response:
        voice = self._voice_of(data)
        if isinstance(voice, web.Response):
            return voice
        del self.voices[voice.voice_id]
        self.deleted_voices.append(voice.voice_id)
        return {}

    def _unusable_voice(self, payload: dict[str, Any]) -> str | None:
        """Why a synthesis task cannot use its voice: a cloned one (ids made here start with
        "cosyvoice-") that is unknown, not ready or made for another model; presets pass."""
        voice_id = str(payload.get("parameters", {}).get("voice", ""))
        if not voice_id.startswith("cosyvoice-"):
            return None
        voice = self.voices.get(voice_id)
        if voice is None:
            return f"voice not found: {voice_id}"
        if voice.status != "OK":
            return f"voice {voice_id} is {voice.status}"
        if voice.target_model != payload.get("model"):
            return f"voice {voice_id} was made for {voice.target_model}"
        return None

    # --- WebSocket duplex tasks ---------------------------------------------------------------
    async def inference(self, request: web.Request) -> web.StreamResponse:
        item = self._record("ws", request)
        if not self._authorized(item):
            return self._unauthorized(item)
        if self.behaviour.ws_handshake_status:
            status = self.behaviour.ws_handshake_status
            return self._error(Fault("http", status, "ServiceUnavailable", "handshake refused"))
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections += 1
        item.connection = self.connections
        # Tasks one after the other, as the service runs them: a connection whose task finished
        # takes the next run-task (each task is recorded on its own).
        while True:
            self._idle[ws] = item.connection
            try:
                first = await ws.receive()
            finally:
                self._idle.pop(ws, None)
            if first.type != WSMsgType.TEXT:
                await ws.close()
                return ws
            if item.started_at is not None:  # a later task on this connection
                item = Received(
                    service="ws",
                    authorization=item.authorization,
                    headers=item.headers,
                    opened_at=item.opened_at,
                    connection=item.connection,
                )
                self.received.append(item)
            if not await self._task(request, ws, item, first):
                return ws

    async def _task(
        self, request: web.Request, ws: web.WebSocketResponse, item: Received, first: Any
    ) -> bool:
        """The task `first` (its run-task) starts on `ws`; True when it finished and the
        connection is open for another."""
        item.started_at = time.monotonic()
        message = json.loads(first.data)
        header, payload = message.get("header", {}), message.get("payload", {})
        item.actions.append(header.get("action", ""))
        item.payload = payload
        task_id = header.get("task_id", "")
        item.service = payload.get("task", "ws")
        fault = self.behaviour.asr_fault if item.service == "asr" else self.behaviour.tts_fault
        if fault and fault.kind == "hang":
            await self.hang()
            return False
        if fault and fault.kind == "task-failed":
            await self._event(ws, task_id, "task-failed", fault=fault)
            await ws.close()
            return False
        unusable = self._unusable_voice(payload) if item.service == "tts" else None
        if unusable:
            refusal = Fault("task-failed", 400, "InvalidParameter", unusable)
            await self._event(ws, task_id, "task-failed", fault=refusal)
            await ws.close()
            return False
        if item.service == "tts" and self.behaviour.tts_stray_event:
            stray = self.behaviour.tts_stray_event
            await self._event(ws, uuid.uuid4().hex, stray, payload={"output": {}, "usage": None})
        await self._event(ws, task_id, "task-started", payload={})
        if item.service == "asr":
            return await self._asr(request, ws, item, task_id, fault)
        return await self._tts(request, ws, item, task_id, fault)

    @staticmethod
    async def _event(
        ws: web.WebSocketResponse,
        task_id: str,
        event: str,
        payload: dict[str, Any] | None = None,
        fault: Fault | None = None,
    ) -> None:
        header: dict[str, Any] = {"task_id": task_id, "event": event, "attributes": {}}
        if fault is not None:
            header["error_code"] = fault.code
            header["error_message"] = fault.message
        await ws.send_str(json.dumps({"header": header, "payload": payload or {}}))

    def _sentence(self, heard: int, total_words: int, final: bool) -> dict[str, Any]:
        spoken = self.behaviour.transcript.split()
        text = " ".join(spoken if final else spoken[: max(1, min(heard, total_words))])
        return {
            "output": {
                "sentence": {
                    "begin_time": 0,
                    "end_time": 1000 * len(spoken) if final else None,
                    "text": text,
                    "sentence_end": final,
                    "words": [],
                }
            },
            "usage": {"duration": 1} if final else None,
        }

    async def _asr(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        item: Received,
        task_id: str,
        fault: Fault | None,
    ) -> bool:
        """True when the task finished (the connection may take another)."""
        total_words = len(self.behaviour.transcript.split())
        next_interim = self.behaviour.asr_interim_every_bytes
        interims = 0
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                item.audio_bytes += len(msg.data)
                item.audio_frames += 1
                if fault and fault.kind == "drop":
                    self.drop(request)
                    return False
                while item.audio_bytes >= next_interim:
                    next_interim += self.behaviour.asr_interim_every_bytes
                    interims += 1
                    await asyncio.sleep(self.behaviour.asr_result_delay)
                    payload = self._sentence(interims, total_words, final=False)
                    await self._event(ws, task_id, "result-generated", payload=payload)
            elif msg.type == WSMsgType.TEXT:
                action = json.loads(msg.data).get("header", {}).get("action", "")
                item.actions.append(action)
                if action == "finish-task":
                    await asyncio.sleep(self.behaviour.asr_result_delay)
                    if item.audio_bytes:
                        payload = self._sentence(total_words, total_words, final=True)
                        await self._event(ws, task_id, "result-generated", payload=payload)
                    # A non-empty payload: with {} the SDK never calls on_complete.
                    await self._event(
                        ws, task_id, "task-finished", payload={"output": {}, "usage": None}
                    )
                    return True
            else:
                break
        item.close_code = ws.close_code
        return False

    async def _tts(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        item: Received,
        task_id: str,
        fault: Fault | None,
    ) -> bool:
        """True when the task finished (the connection may take another)."""
        sample_rate = int(item.payload.get("parameters", {}).get("sample_rate") or 22050)
        sent_any = False
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            action = message.get("header", {}).get("action", "")
            item.actions.append(action)
            if action == "continue-task":
                text = message.get("payload", {}).get("input", {}).get("text", "")
                item.texts.append(text)
                audio = tone(len(text) * self.behaviour.tts_seconds_per_char, sample_rate)
                step = sample_rate // 10 * 2  # 100 ms chunks
                due = asyncio.get_running_loop().time()
                for start in range(0, len(audio), step):
                    due += (
                        self.behaviour.tts_chunk_delay
                        if sent_any
                        else self.behaviour.tts_first_chunk_delay
                    )
                    await until(due)
                    await ws.send_bytes(audio[start : start + step])
                    sent_any = True
                    if fault and fault.kind == "drop":
                        self.drop(request)
                        return False
                sentence = {
                    "output": {"sentence": {"words": []}},
                    "usage": {"characters": len(text)},
                }
                await self._event(ws, task_id, "result-generated", payload=sentence)
            elif action == "finish-task":
                await self._event(
                    ws, task_id, "task-finished", payload={"output": {}, "usage": None}
                )
                return True
        return False
