"""The wire contract of docs/protocol.md in both directions: error codes, close codes, the
validation of client frames and a builder for every server event.

Every server→client frame is made here, so that adding an event is one builder plus its row in
docs/protocol.md and its handler in the web client (tests/test_wire_contract.py checks that the
three agree), and so that `ref` is attached one way: present when the causing frame had an `id`.
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
    RATE_LIMITED = 4429  # a limit of the client's address or user (chat.limits) is reached
    UNAVAILABLE = 4503  # a service the session needs (Redis) is unreachable at the handshake
    ABNORMAL = 1006  # the connection was lost without a close frame


class ProtocolError(Exception):
    def __init__(self, code: Err, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


_NUMBER = (int, float)

# type -> {field: (accepted python types, required)}; the realtime messages' fields have rules
# of their own (CHECKS below)
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
    check = CHECKS.get(kind)
    if check is not None:
        try:
            check(message)
        except ValueError as exc:
            raise ProtocolError(Err.BAD_MESSAGE, str(exc), ref) from None
    return kind, message, ref


# --- the realtime messages' fields (their states are the realtime handler's) -----------------

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
DIRECTIONS = ("both", "send", "recv")
TRANSPORTS = ("webrtc", "websocket")
MAX_CANDIDATES = 64  # in one offer; a browser sends a handful per network interface
MAX_CANDIDATE_CHARS = 512
MAX_LANGUAGE_CHARS = 35


def _check_offer(msg: dict[str, Any]) -> None:
    sdp = msg.get("sdp")
    candidates = msg.get("candidates", [])
    if not isinstance(sdp, str) or not sdp.strip():
        raise ValueError("offer needs `sdp`, a non-empty string")
    if msg.get("sdp_type", "offer") != "offer":
        raise ValueError('`sdp_type` must be "offer"')
    if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
        raise ValueError("`candidates` must be a list of ice_candidate objects")
    if len(candidates) > MAX_CANDIDATES:
        raise ValueError(f"an offer carries at most {MAX_CANDIDATES} candidates")
    for candidate in candidates:
        _check_candidate(candidate)


def _check_candidate(msg: dict[str, Any]) -> None:
    """The fields of an ICE candidate (whether its line describes a usable address is the
    realtime handler's check)."""
    candidate = msg.get("candidate")
    sdp_mid = msg.get("sdpMid")
    index = msg.get("sdpMLineIndex")
    if not isinstance(candidate, str) or len(candidate) > MAX_CANDIDATE_CHARS:
        raise ValueError(f"`candidate` must be a string of at most {MAX_CANDIDATE_CHARS} chars")
    if sdp_mid is not None and (not isinstance(sdp_mid, str) or len(sdp_mid) > 32):
        raise ValueError("`sdpMid` must be a string (at most 32 chars) or null")
    if index is not None and (
        isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1024
    ):
        raise ValueError("`sdpMLineIndex` must be an integer from 0 to 1023, or null")


def _check_ready(msg: dict[str, Any]) -> None:
    if msg.get("direction", "both") not in DIRECTIONS:
        raise ValueError('`direction` must be "both", "send" or "recv"')


def _check_asr_start(msg: dict[str, Any]) -> None:
    language = msg.get("language")
    rate = msg.get("sample_rate", MIN_SAMPLE_RATE)
    if language is not None and (
        not isinstance(language, str) or not 0 < len(language) <= MAX_LANGUAGE_CHARS
    ):
        raise ValueError('`language` must be a language tag such as "en-US"')
    if msg.get("transport") not in (None, *TRANSPORTS):
        raise ValueError('`transport` must be "webrtc" or "websocket"')
    if msg.get("format", "pcm16") != "pcm16":
        raise ValueError('`format` must be "pcm16"')
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int)
        or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE
    ):
        raise ValueError(
            f"`sample_rate` must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}"
        )


CHECKS = {
    "offer": _check_offer,
    "ice_candidate": _check_candidate,
    "ready": _check_ready,
    "asr_start": _check_asr_start,
}


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


# Every server→client event type; tests/test_wire_contract.py checks docs and client against it.
EVENTS = (
    "init",
    "pong",
    "answer",
    "connected",
    "ready",
    "asr_interim",
    "asr_result",
    "text_delta",
    "text_response",
    "tts_start",
    "tts_complete",
    "turn_progress",
    "video_queued",
    "video_progress",
    "video_segment",
    "video_ready",
    "session_ended",
    "error",
)


def event(kind: str, ref: str | None = None, /, **fields: Any) -> dict[str, Any]:
    """A server event of type `kind`: the one place that attaches `ref` (when there is one)."""
    if kind not in EVENTS:
        raise ValueError(f"{kind!r} is not an event of the protocol")
    frame: dict[str, Any] = {"type": kind, **fields}
    if ref is not None:
        frame["ref"] = ref
    return frame


def error(
    code: Err | str,
    message: str,
    *,
    retryable: bool = False,
    ref: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The `error` event; unlike the others it always carries `ref` (null without one). A code
    outside `Err` is a bug of ours and fails here rather than reaching a client. `extra`: fields
    of particular codes (`retry_after`, `limit` of ERR_RATE_LIMITED)."""
    return {
        "type": "error",
        "code": str(Err(code)),
        "message": message,
        "retryable": retryable,
        "ref": ref,
        **extra,
    }


def pong(timestamp: Any, ref: str | None) -> dict[str, Any]:
    return event("pong", ref, timestamp=timestamp, server_time=now_ms())


def asr_result(text: str, utterance_id: str, message_id: int, ref: str | None) -> dict[str, Any]:
    """Built here once for both the realtime path and the upload chain's transcribe step."""
    return event("asr_result", ref, text=text, utterance_id=utterance_id, message_id=message_id)


def asr_interim(text: str, utterance_id: str, ref: str | None) -> dict[str, Any]:
    return event("asr_interim", ref, text=text, utterance_id=utterance_id)


def text_delta(delta: str, message_id: int, ref: str | None) -> dict[str, Any]:
    return event("text_delta", ref, delta=delta, message_id=message_id)


def text_response(
    text: str, message_id: int, reply_to: int | None, ref: str | None, *, interrupted: bool = False
) -> dict[str, Any]:
    extra = {"interrupted": True} if interrupted else {}
    return event("text_response", ref, text=text, message_id=message_id, reply_to=reply_to, **extra)


def tts_start(
    request_id: str, message_id: int, transport: str, sample_rate: int, ref: str | None
) -> dict[str, Any]:
    return event(
        "tts_start",
        ref,
        request_id=request_id,
        message_id=message_id,
        transport=transport,
        format="pcm16",
        sample_rate=sample_rate,
    )


def tts_complete(
    request_id: str,
    audio_url: str | None,
    duration_ms: int,
    ref: str | None,
    *,
    interrupted: bool = False,
) -> dict[str, Any]:
    extra = {"interrupted": True} if interrupted else {}
    return event(
        "tts_complete",
        ref,
        request_id=request_id,
        audio_url=audio_url,
        duration_ms=duration_ms,
        **extra,
    )


def session_ended(session_id: str, reason: str, files_deleted: int) -> dict[str, Any]:
    return event(
        "session_ended", None, session_id=session_id, reason=reason, files_deleted=files_deleted
    )


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
