"""Prometheus metrics of the service (prometheus_client), summed over every process of a machine.

A machine runs several processes that record metrics: web processes (one per core) and the
Celery workers' pool processes (prefork: forked children, replaced when they die). Each keeps
its values in files of its own under METRICS_DIR (prometheus_client's multiprocess mode), and
whoever is scraped (a web process's `/metrics`, a worker's WORKER_METRICS_ADDR) serves the sum
over all those files: one scrape per machine sees every process. Gauges of processes that died
are dropped at the next scrape; their counters and histograms stay, as counters must.

The metrics themselves are recorded where things happen: sessions and WebRTC in the consumer,
turns and their stage times when a turn ends (chat.observe), render speed in the render task.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

PREFIX = "echo_"

# Multiprocess mode is chosen by prometheus_client when it is first imported, from the
# environment; a worker imports it (through Flower's Celery command) before the settings set
# PROMETHEUS_MULTIPROC_DIR, so the value class is switched here, before any metric exists.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.METRICS_DIR))
if not getattr(values.ValueClass, "_multiprocess", False):
    values.ValueClass = values.MultiProcessValue()

SECONDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)

SESSIONS_OPEN = Gauge(
    "echo_sessions_open",
    "Sessions open, by mode and by the transport of their audio (webrtc once a peer is "
    "connected, else websocket)",
    ["mode", "transport"],
    multiprocess_mode="livesum",
)
SESSIONS = Counter("echo_sessions", "Sessions opened", ["mode"])
WEBRTC_CONNECTIONS = Counter(
    "echo_webrtc_connections",
    "WebRTC connections, by outcome: connected, failed (never connected), lost (dropped)",
    ["outcome"],
)
TURNS = Counter(
    "echo_turns",
    "Turns answered, by kind (text, realtime, upload) and outcome (ok, error, interrupted)",
    ["kind", "outcome"],
)
STAGE_SECONDS = Histogram(
    "echo_stage_seconds",
    "Time of a turn's stages: asr (recognition of the utterance), llm_first_token (from the "
    "start of the reply), tts_first_audio (the TTS provider's first audio of the reply), "
    "queue_wait (a task waiting for a worker)",
    ["stage", "kind"],
    buckets=SECONDS,
)
RENDER_RTF = Histogram(
    "echo_render_realtime_factor",
    "Rendering time of a video over its duration (below 1: faster than real time)",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0),
)
PROVIDER_ERRORS = Counter(
    "echo_provider_errors", "Failures of the ASR, LLM and TTS providers, by error code", ["code"]
)
LIMIT_REFUSALS = Counter(
    "echo_limit_refusals",
    "Sessions and turns refused because a user or client address reached a limit (chat.limits), "
    "by limit",
    ["limit"],
)
AUDIO_UNDERRUNS = Counter(
    "echo_audio_underruns",
    "Times the reply's speech on a WebRTC track ran dry before the reply ended (silence heard "
    "in the middle of the avatar's speech)",
)
LOOP_LAG = Histogram(
    "echo_event_loop_lag_seconds",
    "How late a web process's event loop ran a timer that was due (sampled twice a second): "
    "the time every session of the process waited for the loop, at that moment",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
AUDIO_LATE_FRAMES = Counter(
    "echo_audio_late_frames",
    "Reply speech frames a WebRTC track sent more than 20 ms after their real-time instant (the "
    "web process's event loop was too busy to keep the pace)",
)
DASHSCOPE_CONNECTIONS = Counter(
    "echo_dashscope_connections",
    "Websockets opened to DashScope by kind of task (asr, tts): each one a handshake, over TLS a "
    "TLS one; tasks reuse them, so this grows far slower than the tasks",
    ["kind"],
)
LLM_ASKED_AGAIN = Counter(
    "echo_llm_asked_again",
    "Turns whose LLM request, sent while the turn's messages were being stored, was abandoned "
    "because the stored conversation had changed meanwhile, and sent again (one request paid "
    "for and not used each)",
)


# --- recording ---------------------------------------------------------------------------------


def session_opened(mode: str) -> None:
    SESSIONS.labels(mode).inc()
    SESSIONS_OPEN.labels(mode, "websocket").inc()


def session_moved(mode: str, old: str, new: str) -> None:
    """The session's audio transport changed (a WebRTC peer connected, or was lost)."""
    SESSIONS_OPEN.labels(mode, old).dec()
    SESSIONS_OPEN.labels(mode, new).inc()


def session_closed(mode: str, transport: str) -> None:
    SESSIONS_OPEN.labels(mode, transport).dec()


def webrtc(outcome: str) -> None:
    WEBRTC_CONNECTIONS.labels(outcome).inc()


def provider_error(code: str) -> None:
    PROVIDER_ERRORS.labels(str(code)).inc()


def stage(name: str, kind: str, seconds: float) -> None:
    STAGE_SECONDS.labels(name, kind).observe(max(0.0, seconds))


def turn(kind: str, outcome: str) -> None:
    TURNS.labels(kind, outcome).inc()


def render_speed(render_s: float, video_s: float) -> None:
    if video_s > 0:
        RENDER_RTF.observe(render_s / video_s)


def limit_refused(limit: str) -> None:
    LIMIT_REFUSALS.labels(limit).inc()


def loop_lag(seconds: float) -> None:
    LOOP_LAG.observe(max(0.0, seconds))


def audio_underrun() -> None:
    AUDIO_UNDERRUNS.inc()


def audio_late_frame() -> None:
    AUDIO_LATE_FRAMES.inc()


def llm_asked_again() -> None:
    LLM_ASKED_AGAIN.inc()


def dashscope_connection_opened(kind: str) -> None:
    DASHSCOPE_CONNECTIONS.labels(kind=kind).inc()


# --- export ------------------------------------------------------------------------------------

_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def forget_dead_processes(path: Path | None = None) -> None:
    """Drop the live gauges (sessions open) of processes that are gone, however they ended."""
    path = Path(path or settings.METRICS_DIR)
    for name in os.listdir(path):
        found = _LIVE_FILE.match(name)
        if found and not _alive(int(found[1])):
            try:
                multiprocess.mark_process_dead(int(found[1]), str(path))
            except FileNotFoundError:  # another web process of the machine was quicker
                pass


class MachineCollector:
    """The service's own metrics (`echo_*`) summed over every process writing in the dir;
    other libraries' metrics kept there (Flower's, in a process that loads this app) are left
    to their own exporters."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path or settings.METRICS_DIR)
        self._inner = multiprocess.MultiProcessCollector(None, str(self.path))

    def collect(self) -> Iterator[Metric]:
        forget_dead_processes(self.path)
        for metric in self._inner.collect():
            if metric.name.startswith(PREFIX):
                yield metric


def registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MachineCollector())
    return registry


def exposition() -> bytes:
    return generate_latest(registry())


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: the Prometheus text format (METRICS_TOKEN, when set, as a bearer token)."""
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET"})
    if not _allowed(request):
        return HttpResponse(
            "a bearer token is required\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return HttpResponse(
        exposition(), content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"}
    )


def serve_for_worker(address: str) -> None:
    """Serve the machine's metrics from a Celery worker's main process (WORKER_METRICS_ADDR),
    for machines that run no web process; the pool processes record, this one serves."""
    from prometheus_client import start_http_server

    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=registry())


def on_process_exit() -> None:
    """This process's live gauges no longer count (called as a process ends)."""
    multiprocess.mark_process_dead(os.getpid(), str(settings.METRICS_DIR))
