"""Fixtures of the realtime tests (registered in tests/conftest.py).

The tests drive `chat.realtime` with a real aiortc client peer in the same event loop
(`harness.peer.ClientPeer`, shared with the benchmarks): the client plays espeak-ng speech on
its microphone track, paced in real time, and records what the server's speaker track sends
back. pytest-asyncio is not used: `run()` runs one async body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

from chat.providers.base import ASRProvider, ASRStream, Hypothesis
from harness.peer import ClientPeer

__all__ = ["ClientPeer", "EchoASR", "FakeContext", "negotiate", "run", "wait_until"]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """Run one async test body in a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it holds (event-driven tests without fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


class FakeContext:
    """A SessionContext that records what the handler sends and asks for."""

    def __init__(self, language: str = "en-US") -> None:
        self.session_id = "test-session"
        self.language = language
        self.events: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.utterances: list[tuple[str, str]] = []
        self.barge_ins = 0
        self.on_barge_in: Callable[[], Awaitable[None]] | None = None

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def send_error(
        self, code: str, message: str, *, retryable: bool = False, ref: str | None = None
    ) -> None:
        self.errors.append({"code": code, "message": message, "retryable": retryable, "ref": ref})

    async def user_utterance(self, text: str, utterance_id: str) -> None:
        self.utterances.append((text, utterance_id))

    async def barge_in(self) -> None:
        self.barge_ins += 1
        if self.on_barge_in is not None:
            await self.on_barge_in()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.errors]


async def negotiate(handler: Any, ctx: FakeContext, client: ClientPeer, ref: str = "o1") -> None:
    """offer → answer → connected → ready, as a browser does it."""
    answered, errors = len(ctx.of_type("answer")), len(ctx.errors)
    await handler.handle(
        "offer", {"type": "offer", "sdp": await client.offer(), "sdp_type": "offer"}, ref
    )
    await wait_until(
        lambda: len(ctx.of_type("answer")) > answered or len(ctx.errors) > errors, 15, "answer"
    )
    answers = ctx.of_type("answer")
    assert answers, f"no answer; errors: {ctx.errors}"
    await client.accept(answers[-1]["sdp"])
    await wait_until(lambda: len(ctx.of_type("connected")) > answered, 15, "connected")
    await handler.handle("ready", {"direction": "both"}, "r1")


class EchoASRStream(ASRStream):
    """Test-only recogniser: reports how much audio it got (interim per 200 ms, and a final)."""

    def __init__(self, provider: EchoASR) -> None:
        self.provider = provider
        self.bytes = 0
        self._queue: asyncio.Queue[Hypothesis | None] = asyncio.Queue()
        self.closed = False

    async def feed(self, pcm: bytes) -> None:
        before = self.bytes // 6400
        self.bytes += len(pcm)
        if self.bytes // 6400 != before:
            self._queue.put_nowait(Hypothesis(f"heard {self.bytes // 32} ms", False))

    async def finish(self) -> None:
        self._queue.put_nowait(Hypothesis(f"utterance of {self.bytes // 32} ms", True))
        self._queue.put_nowait(None)

    async def results(self) -> AsyncIterator[Hypothesis]:
        while (hyp := await self._queue.get()) is not None:
            yield hyp

    async def close(self) -> None:
        self.closed = True


class EchoASR(ASRProvider):
    """Test-only ASRProvider returning EchoASRStreams (and remembering them)."""

    name = "echo"

    def __init__(self) -> None:
        self.streams: list[EchoASRStream] = []

    def stream(self, language: str, sample_rate: int = 16000) -> ASRStream:
        stream = EchoASRStream(self)
        self.streams.append(stream)
        return stream

    async def recognize_file(self, path: str, url: str, language: str) -> str:
        return ""


@pytest.fixture
def echo_asr() -> EchoASR:
    return EchoASR()


@pytest.fixture
def fake_ctx() -> FakeContext:
    return FakeContext()
