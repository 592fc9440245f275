"""What the cloud backends share: pointing the DashScope SDK at its hosts, turning provider
failures into the stage's error with a retryable flag, and keeping API keys out of messages.

The SDK reads its base URLs and CosyVoice's key from module attributes at call time, so they
are set before every call from settings (tests point them at a loopback server).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from typing import Any, TypeVar

from django.conf import settings

from chat.providers.base import ProviderError

logger = logging.getLogger(__name__)
E = TypeVar("E", bound=ProviderError)
R = TypeVar("R")

# Provider error codes that describe a passing condition: trying again may help.
_RETRYABLE_CODES = (
    "throttling",
    "internalerror",
    "serviceunavailable",
    "timeout",
    "requesttimeout",
)
_SDK_DEFAULTS: dict[str, str] = {}


class _RedactSecrets(logging.Filter):
    """Removes known API keys from log records of the SDKs, which log response bodies (and a
    rejecting server may quote the key it was given)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, *self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if redact(text, *self.secrets) != text:
                record.exc_text = redact(text, *self.secrets)
        return True


_filter = _RedactSecrets()
_GUARDED_LOGGERS = ("dashscope", "websocket", "aiohttp", "openai", "httpx", "httpcore", "urllib3")


def guard_secrets(*secrets: str) -> None:
    """Keep these keys out of every log record the provider libraries write."""
    _filter.secrets.update(secret for secret in secrets if secret and len(secret) >= 4)
    for name in _GUARDED_LOGGERS:
        log = logging.getLogger(name)
        if _filter not in log.filters:
            log.addFilter(_filter)


# The asyncio HTTP session of each event loop for the DashScope SDK's asyncio calls.
_http_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
    weakref.WeakKeyDictionary()
)


def dashscope_http_session() -> Any:
    """The running loop's `aiohttp.ClientSession` for the SDK's asyncio calls (`session=`).

    Connections stay open between replies (no TLS handshake per reply). Proxies come from the
    environment (`HTTPS_PROXY`, `NO_PROXY`), read once here: the SDK's own session reads them,
    and `~/.netrc`, on an executor thread at every request (two thread hops before each reply).
    """
    import aiohttp
    import dashscope
    from aiohttp.helpers import get_env_proxy_for_url
    from dashscope.api_entities.aio_session import get_ssl_context
    from yarl import URL

    loop = asyncio.get_running_loop()
    session = _http_sessions.get(loop)
    if session is None or session.closed:
        proxy = None
        with contextlib.suppress(LookupError):
            proxy, _ = get_env_proxy_for_url(URL(dashscope.base_http_api_url))
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=get_ssl_context()), proxy=proxy
        )
        _http_sessions[loop] = session
    return session


# The asyncio session of each event loop for DashScope's websockets.
_websocket_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
    weakref.WeakKeyDictionary()
)


def dashscope_websocket_session() -> Any:
    """The running loop's `aiohttp.ClientSession` for DashScope's websockets, with no limit
    on connections (aiohttp's default of 100 would count every open websocket). Like the HTTP
    session it lives as long as the loop, and is closed with it (`close_dashscope_http_session`,
    or at exit)."""
    import aiohttp

    loop = asyncio.get_running_loop()
    session = _websocket_sessions.get(loop)
    if session is None or session.closed:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        _websocket_sessions[loop] = session
    return session


_tls_lock = threading.Lock()
_tls_context: ssl.SSLContext | None = None


def websocket_tls_context() -> ssl.SSLContext:
    """The TLS context of DashScope's `wss://` sockets (Paraformer's and CosyVoice's,
    chat/providers/dashscope_ws.py), built once per process (sockets open on several loops'
    threads at once): certificates and host names verified against the system's CAs, or the
    file or folder in WEBSOCKET_CLIENT_CA_BUNDLE, the variable the SDK's own transport
    (websocket-client) reads (SSLKEYLOGFILE honoured too). Loading the CA certificates costs
    ~50 ms of CPU: websocket-client, left to itself, did it for every socket."""
    global _tls_context
    with _tls_lock:
        if _tls_context is None:
            bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")
            cafile = bundle if bundle and os.path.isfile(bundle) else None
            capath = bundle if bundle and os.path.isdir(bundle) else None
            _tls_context = ssl.create_default_context(cafile=cafile, capath=capath)
        return _tls_context


def forget_websocket_tls_context() -> None:
    """The next connection builds the context again (after WEBSOCKET_CLIENT_CA_BUNDLE changed)."""
    global _tls_context
    with _tls_lock:
        _tls_context = None


# What else a loop's DashScope clients hold, closed before its sessions (the websockets that
# wait for their next task: chat/providers/dashscope_ws.py registers itself here).
_before_sessions_close: list[Callable[[], Awaitable[None]]] = []


def close_before_sessions(closer: Callable[[], Awaitable[None]]) -> None:
    """Have `close_dashscope_http_session` await `closer()` (on the loop) first."""
    if closer not in _before_sessions_close:
        _before_sessions_close.append(closer)


async def close_dashscope_http_session() -> None:
    """Close the running loop's sessions (a loop that ends before the process does)."""
    for closer in _before_sessions_close:
        try:
            await closer()
        except Exception:  # noqa: BLE001 - the sessions are closed all the same
            logger.debug("closing a loop's DashScope connections failed", exc_info=True)
    loop = asyncio.get_running_loop()
    for sessions in (_http_sessions, _websocket_sessions):
        session = sessions.pop(loop, None)
        if session is not None:
            await session.close()


@atexit.register
def _close_http_sessions() -> None:
    """At exit: close the sessions left open (the web process's, a worker's)."""
    left = [*_http_sessions.items(), *_websocket_sessions.items()]
    for loop, session in left:
        if session.closed:
            continue
        with contextlib.suppress(Exception):
            if loop.is_running():  # on a thread of its own (a worker's publishing loop)
                asyncio.run_coroutine_threadsafe(session.close(), loop).result(2)
            elif not loop.is_closed():
                loop.run_until_complete(session.close())
            else:  # its sockets went with their loop
                session.detach()
    _http_sessions.clear()
    _websocket_sessions.clear()


def run_once(coro: Coroutine[Any, Any, R]) -> R:
    """`asyncio.run` for a loop that ends afterwards (a command, a test), closing the loop's
    DashScope HTTP session before it ends (the web process's loop keeps its own for life)."""

    async def main() -> R:
        try:
            return await coro
        finally:
            await close_dashscope_http_session()

    return asyncio.run(main())


def configure_dashscope() -> str:
    """Apply settings to the SDK's module attributes; return the API key for per-call use."""
    import dashscope

    if not _SDK_DEFAULTS:
        _SDK_DEFAULTS["http"] = dashscope.base_http_api_url
        _SDK_DEFAULTS["ws"] = dashscope.base_websocket_api_url
    dashscope.base_http_api_url = settings.DASHSCOPE_HTTP_BASE_URL or _SDK_DEFAULTS["http"]
    dashscope.base_websocket_api_url = settings.DASHSCOPE_WEBSOCKET_BASE_URL or _SDK_DEFAULTS["ws"]
    key = settings.DASHSCOPE_API_KEY
    guard_secrets(key)
    dashscope.api_key = key or None  # CosyVoice has no per-call key: it reads this global.
    return key


def redact(text: object, *secrets: str) -> str:
    """`text` with every secret (API keys) replaced, for messages that reach clients and logs."""
    result = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            result = result.replace(secret, "***")
    return result


def is_retryable_status(status: int | None, code: str | None = None) -> bool:
    """Whether a failure with this HTTP-like status and provider code may pass on retry:
    rate limits, server errors, timeouts and lost connections (status -1 in the SDK) may;
    bad requests and rejected keys never do."""
    if status is not None and (
        status == -1 or status == HTTPStatus.TOO_MANY_REQUESTS or status >= 500
    ):
        return True
    lowered = str(code or "").lower().replace("_", "").replace(".", "")
    return any(marker in lowered for marker in _RETRYABLE_CODES)


def is_retryable_exception(exc: BaseException) -> bool:
    """Network-level failures (timeouts, refused or dropped connections) are retryable;
    programming and validation errors are not."""
    import aiohttp
    import httpx
    import requests
    import websocket

    if isinstance(exc, (TimeoutError, ConnectionError, requests.RequestException)):
        return True
    if isinstance(exc, (aiohttp.ClientError, websocket.WebSocketException, httpx.TransportError)):
        return True
    return isinstance(exc, OSError)


def failure(
    error_cls: type[E],
    what: str,
    *,
    status: int | None = None,
    code: str | None = None,
    message: object = "",
    exc: BaseException | None = None,
    secrets: tuple[str, ...] = (),
    retryable: bool | None = None,
) -> E:
    """One provider failure as the stage's error: a short message for people, the provider's
    own words in `provider_message`, the key removed from both, and a warning in the log."""
    if exc is not None:
        retryable = is_retryable_exception(exc) if retryable is None else retryable
        provider_message = redact(f"{type(exc).__name__}: {exc}", *secrets)
        summary = f"{what} failed: {'connection problem' if retryable else type(exc).__name__}"
    else:
        retryable = is_retryable_status(status, code) if retryable is None else retryable
        provider_message = redact(message, *secrets)
        detail = " ".join(str(part) for part in (status, code) if part not in (None, ""))
        summary = f"{what} failed ({detail})" if detail else f"{what} failed"
    error = error_cls(summary, retryable=retryable, provider_message=provider_message)
    logger.warning("%s: %s (retryable=%s)", summary, provider_message, retryable)
    return error


def timed_out(error_cls: type[E], what: str, seconds: float) -> E:
    """The error for a provider that did not answer within the configured time."""
    message = f"no answer within {seconds:g} s"
    logger.warning("%s timed out: %s", what, message)
    return error_cls(f"{what} timed out", retryable=True, provider_message=message)
