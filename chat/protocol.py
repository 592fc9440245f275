"""The wire contract of PROTOCOL.md as data: error codes, close codes, message validation.

Validation is table-driven so the consumer's receive path stays a dispatch on `type`.
"""

from __future__ import annotations

import json
import re
import time
from enum import StrEnum
from typing import Any

PROTOCOL_VERSION = "1.0"
MAX_ID_CHARS = 64
MAX_TEXT_FRAME_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # no message of the protocol nests deeper than 4
AUDIO_FORMATS = ["wav", "webm/opus", "ogg/opus", "mp3"]


class Err(StrEnum):
    BAD_MESSAGE = "ERR_BAD_MESSAGE"
    UNKNOWN_TYPE = "ERR_UNKNOWN_TYPE"
    STATE = "ERR_STATE"
    AUTH = "ERR_AUTH"
    AVATAR_NOT_FOUND = "ERR_AVATAR_NOT_FOUND"
    MODE_INVALID = "ERR_MODE_INVALID"
    AUDIO_INVALID = "ERR_AUDIO_INVALID"
    TOO_LARGE = "ERR_TOO_LARGE"
    RATE_LIMITED = "ERR_RATE_LIMITED"
    WEBRTC_FAILED = "ERR_WEBRTC_FAILED"
    ASR_FAILED = "ERR_ASR_FAILED"
    LLM_FAILED = "ERR_LLM_FAILED"
    TTS_FAILED = "ERR_TTS_FAILED"
    RENDER_FAILED = "ERR_RENDER_FAILED"
    BUSY = "ERR_BUSY"
    SESSION_TIMEOUT = "ERR_SESSION_TIMEOUT"
    INTERNAL = "ERR_INTERNAL"


class Close:
    NORMAL = 1000
    BAD_REQUEST = 4400  # invalid mode or query parameters
    AUTH = 4401
    NOT_FOUND = 4404  # unknown avatar
    TIMEOUT = 4408  # idle past SESSION_TIMEOUT_S
    UNAVAILABLE = 4503  # a service the session needs (Redis) is unreachable at the handshake
    ABNORMAL = 1006  # the connection was lost without a close frame


class ProtocolError(Exception):
    def __init__(self, code: Err, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


_NUMBER = (int, float)

# type -> {field: (accepted python types, required)}; realtime messages are checked by their handler
FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "ping": {"timestamp": (_NUMBER + (str,), False)},
    "text_message": {"text": ((str,), True)},
    "interrupt": {},
    "stop_session": {},
    "offer": {},
    "ice_candidate": {},
    "ready": {},
    "asr_start": {},
    "asr_stop": {},
}


def parse(text: str) -> tuple[str, dict[str, Any], str | None]:
    """Decode one client text frame into (type, message, ref) or raise ProtocolError.

    Every string of the message (keys too) is safe to store and to echo: JSON may escape lone
    UTF-16 surrogates ("\\ud800") that no UTF-8 encoder accepts, so they become U+FFFD here, once,
    instead of failing later in the database or in the WebSocket send.
    """
    if len(text) > MAX_TEXT_FRAME_BYTES:
        raise ProtocolError(
            Err.TOO_LARGE, f"text frames are limited to {MAX_TEXT_FRAME_BYTES} bytes"
        )
    try:
        message = json.loads(text)
    except RecursionError:
        raise ProtocolError(Err.BAD_MESSAGE, _TOO_DEEP) from None
    except ValueError:
        raise ProtocolError(Err.BAD_MESSAGE, "frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(Err.BAD_MESSAGE, "frame must be a JSON object")
    # The walk runs only when it may be needed: only `[`/`{` nest, and a surrogate comes from
    # a `\u` escape (daphne refuses text frames that are not UTF-8) or an in-process caller.
    surrogates = ("\\u" in text and _ESCAPED_SURROGATE.search(text) is not None) or (
        not text.isascii() and _SURROGATE.search(text) is not None
    )
    if surrogates or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        message = _checked(message, surrogates)
    ref = message.get("id")
    if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_ID_CHARS):
        raise ProtocolError(
            Err.BAD_MESSAGE, f"id must be a string of at most {MAX_ID_CHARS} characters"
        )
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(Err.BAD_MESSAGE, "field 'type' must be a string", ref)
    fields = FIELDS.get(kind)
    if fields is None:
        raise ProtocolError(Err.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}", ref)
    for name, (types, required) in fields.items():
        value = message.get(name)
        if value is None:
            if required:
                raise ProtocolError(Err.BAD_MESSAGE, f"{kind}: field '{name}' is required", ref)
        elif not isinstance(value, types) or isinstance(value, bool):
            raise ProtocolError(Err.BAD_MESSAGE, f"{kind}: field '{name}' has the wrong type", ref)
    return kind, message, ref


_TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub(text: str) -> str:
    """The text with every lone surrogate replaced by U+FFFD, so that it encodes as UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


def _checked(message: dict[str, Any], surrogates: bool) -> dict[str, Any]:
    """The message with its strings scrubbed (when `surrogates`), refused past MAX_JSON_DEPTH.

    Iterative, so that no depth json.loads accepts can exhaust the stack here.
    """
    fix = scrub if surrogates else str
    root: dict[str, Any] = {}
    stack: list[tuple[Any, dict[str, Any] | list[Any], int]] = [(message, root, 1)]
    while stack:
        source, target, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ProtocolError(Err.BAD_MESSAGE, _TOO_DEEP)
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, value in items:
            if isinstance(value, str):
                value = fix(value)
            elif isinstance(value, dict | list):
                child: dict[str, Any] | list[Any] = {} if isinstance(value, dict) else []
                stack.append((value, child, depth + 1))
                value = child
            if isinstance(target, dict):
                target[fix(key)] = value
            else:
                target.append(value)
    return root


def error(
    code: Err | str, message: str, *, retryable: bool = False, ref: str | None = None
) -> dict[str, Any]:
    return {
        "type": "error",
        "code": str(code),
        "message": message,
        "retryable": retryable,
        "ref": ref,
    }


def now_ms() -> int:
    return int(time.time() * 1000)


class RateLimiter:
    """A token bucket: `limit` messages per `window` seconds, refilled continuously."""

    __slots__ = ("capacity", "rate", "tokens", "stamp", "warned_at")

    def __init__(self, limit: int, window: float) -> None:
        self.capacity = float(limit)
        self.rate = limit / window
        self.tokens = float(limit)
        self.stamp = time.monotonic()
        self.warned_at = 0.0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def should_warn(self) -> bool:
        """Tell the client once per refill period, not once per dropped message."""
        now = time.monotonic()
        if now - self.warned_at >= self.capacity / self.rate:
            self.warned_at = now
            return True
        return False
