"""A short real call per configured backend, timed: is each provider usable right now?

Used by `manage.py check_providers` (operators after a deploy, or with new keys). Each check
does the smallest call that exercises the backend's whole path: credentials, network, model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chat.providers.base import (
    SPEECH_RATE,
    ASRProvider,
    ChatTurn,
    LLMProvider,
    ProviderError,
    TTSProvider,
)
from chat.providers.registry import backend_name, build

STAGES = ("asr", "llm", "tts")
_SILENCE_100MS = b"\x00\x00" * 1600


@dataclass(frozen=True)
class CheckResult:
    stage: str
    backend: str
    ok: bool
    milliseconds: float
    detail: str = ""


async def _check_asr(provider: ASRProvider) -> str:
    stream = provider.stream("en-US", SPEECH_RATE)
    try:
        for _ in range(5):
            await stream.feed(_SILENCE_100MS)
        await stream.finish()
        heard = [hypothesis.text async for hypothesis in stream.results()]
    finally:
        await stream.close()
    return f"heard {heard[-1]!r}" if heard else "recognised half a second of silence"


async def _check_llm(provider: LLMProvider) -> str:
    turn = ChatTurn(
        persona="You are a health check. Answer with one short word.",
        history=[{"role": "user", "content": "Say OK."}],
    )
    reply = await provider.reply(turn)
    if not reply.strip():
        raise ProviderError("the model answered with nothing")
    return f"{len(reply)} characters"


async def _check_tts(provider: TTSProvider) -> str:
    audio = await provider.synthesize("Hello.", "", "en-US")
    if not audio:
        raise ProviderError("no audio came back")
    seconds = len(audio) / 2 / provider.sample_rate
    return f"{seconds:.2f} s of audio"


_CHECKS: dict[str, Callable[[Any], Awaitable[str]]] = {
    "asr": _check_asr,
    "llm": _check_llm,
    "tts": _check_tts,
}


async def check(stage: str) -> CheckResult:
    """Build the configured backend of `stage` afresh and make one short call with it."""
    name = backend_name(stage)
    limit = settings.PROVIDER_TIMEOUT_S + settings.PROVIDER_CONNECT_TIMEOUT_S + 5
    started = time.perf_counter()
    provider = None
    try:
        provider = await asyncio.to_thread(build, stage)
        detail = await asyncio.wait_for(_CHECKS[stage](provider), limit)
    except ProviderError as exc:
        detail, ok = (
            f"{exc.code}: {exc.message}"
            + (f" ({exc.provider_message})" if exc.provider_message else ""),
            False,
        )
    except TimeoutError:
        detail, ok = f"no answer within {limit:g} s", False
    except Exception as exc:  # noqa: BLE001 - a check reports, it does not crash
        detail, ok = f"{type(exc).__name__}: {exc}", False
    else:
        ok = True
    finally:
        if provider is not None:
            provider.close()
    return CheckResult(stage, name, ok, (time.perf_counter() - started) * 1000, detail)


async def check_all(stages: tuple[str, ...] = STAGES) -> list[CheckResult]:
    """The checks one after another (in parallel they would distort each other's timings)."""
    return [await check(stage) for stage in stages]
