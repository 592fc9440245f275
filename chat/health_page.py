"""The admin's "Service health" page: the last 24 hours of turns, stage latencies, errors, render
speed and open sessions, drawn from what the database records (the messages' timings and error
codes, the sessions' start and end), so it needs nothing running besides the web process.

Latency plots put each stage on its own chart with the same time axis, and a table compares
the last hour with the rest of the day, so which stage got slow, and when, shows at a glance.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from chat.charts import Series, line_chart
from chat.models import ChatSession, Message, Role
from chat.observe import INTERRUPTED

WINDOW = timedelta(hours=24)
LATENCY_BUCKET = timedelta(minutes=30)
ERROR_BUCKET = timedelta(hours=1)
SESSIONS_STEP = timedelta(minutes=10)
SLOWER = 1.5  # a stage whose last hour's p95 is this much above the rest of the day's: marked

# (timings key, which message holds it, label)
STAGES = (
    ("queue_ms", Role.USER, "Queue wait (uploads)"),
    ("asr_ms", Role.USER, "ASR"),
    ("llm_first_ms", Role.ASSISTANT, "LLM first token"),
    ("tts_first_chunk_ms", Role.ASSISTANT, "TTS first audio"),
    ("render_queue_ms", Role.ASSISTANT, "Render queue wait"),
)


@dataclass
class StageRow:
    key: str
    label: str
    count: int
    p50: float | None
    p95: float | None
    hour_p95: float | None
    slower: bool
    chart: Any = None


@dataclass
class Health:
    now: datetime
    since: datetime
    turns: int = 0
    errors: int = 0
    interrupted: int = 0
    sessions_open: int = 0
    stages: list[StageRow] = field(default_factory=list)
    error_codes: list[tuple[str, int]] = field(default_factory=list)
    render_count: int = 0
    render_p50: float | None = None
    charts: dict[str, Any] = field(default_factory=dict)


def _buckets(since: datetime, now: datetime, size: timedelta) -> list[datetime]:
    """The starts of the buckets [start, start + size) that cover [since, now]."""
    count = max(1, math.ceil((now - since) / size))
    return [since + i * size for i in range(count)]


def _index(when: datetime, since: datetime, size: timedelta) -> int:
    """The bucket of `when` (the window's last instant belongs to its last bucket)."""
    return min(int((when - since) / size), math.ceil(WINDOW / size) - 1)


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def collect(now: datetime | None = None) -> Health:
    now = now or timezone.now()
    since = now - WINDOW
    health = Health(now=now, since=since)
    rows = Message.objects.filter(created_at__gte=since, created_at__lte=now).values_list(
        "role", "created_at", "timings", "error_code", "duration_ms"
    )

    minutes = _buckets(since, now, timedelta(minutes=1))
    turns_per_minute = [0.0] * len(minutes)
    latency_starts = _buckets(since, now, LATENCY_BUCKET)
    samples: dict[str, list[list[float]]] = {
        key: [[] for _ in latency_starts] for key, _, _ in STAGES
    }
    render: list[list[float]] = [[] for _ in latency_starts]
    error_starts = _buckets(since, now, ERROR_BUCKET)
    errors: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(error_starts))
    codes: Counter[str] = Counter()
    roles = {key: role for key, role, _ in STAGES}
    for role, created, timings, error_code, duration_ms in rows:
        timings = timings if isinstance(timings, dict) else {}
        if role == Role.USER:
            health.turns += 1
            turns_per_minute[_index(created, since, timedelta(minutes=1))] += 1
        bucket = _index(created, since, LATENCY_BUCKET)
        for key, value in timings.items():
            ms = _number(value)
            if ms is not None and roles.get(key) == role:
                samples[key][bucket].append(ms)
        render_ms = _number(timings.get("render"))
        if role == Role.ASSISTANT and render_ms is not None and duration_ms:
            render[bucket].append(render_ms / duration_ms)
        if error_code == INTERRUPTED:
            health.interrupted += 1
        elif error_code:
            health.errors += 1
            codes[error_code] += 1
            errors[error_code][_index(created, since, ERROR_BUCKET)] += 1

    hour_from = _index(now - timedelta(hours=1), since, LATENCY_BUCKET)
    for key, _, label in STAGES:
        day = [v for bucket in samples[key] for v in bucket]
        hour = [v for bucket in samples[key][hour_from:] for v in bucket]
        earlier = [v for bucket in samples[key][:hour_from] for v in bucket]
        p95, hour_p95 = _percentile(day, 95), _percentile(hour, 95)
        earlier_p95 = _percentile(earlier, 95)
        row = StageRow(
            key=key,
            label=label,
            count=len(day),
            p50=_percentile(day, 50),
            p95=p95,
            hour_p95=hour_p95,
            slower=bool(earlier_p95 and hour_p95 and hour_p95 > SLOWER * earlier_p95),
        )
        row.chart = line_chart(
            f"{label}: p50 and p95 per 30 minutes, milliseconds",
            latency_starts,
            [
                Series("p50", [_percentile(b, 50) for b in samples[key]]),
                Series("p95", [_percentile(b, 95) for b in samples[key]], "#dc2626"),
            ],
            " ms",
        )
        health.stages.append(row)

    health.error_codes = codes.most_common()
    health.render_count = sum(len(b) for b in render)
    health.render_p50 = _percentile([v for b in render for v in b], 50)
    health.charts["turns"] = line_chart(
        "Turns per minute", minutes, [Series("turns", turns_per_minute)]
    )
    health.charts["errors"] = line_chart(
        "Errors per hour, by code",
        error_starts,
        [Series(code, errors[code]) for code, _ in health.error_codes],
    )
    health.charts["render"] = line_chart(
        "Render time over video duration (real-time factor), p50 and p95 per 30 minutes",
        latency_starts,
        [
            Series("p50", [_percentile(b, 50) for b in render]),
            Series("p95", [_percentile(b, 95) for b in render], "#dc2626"),
        ],
        "x",
    )
    health.charts["sessions"], health.sessions_open = _sessions_chart(since, now)
    return health


def _sessions_chart(since: datetime, now: datetime) -> tuple[Any, int]:
    """Sessions open at each step of the day, from their start and end times."""
    spans = ChatSession.objects.filter(started_at__lte=now).filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=since)
    )
    starts = _buckets(since, now, SESSIONS_STEP) + [now]
    counts = [0.0] * len(starts)
    for started, ended in spans.values_list("started_at", "ended_at"):
        for index, when in enumerate(starts):
            if started <= when and (ended is None or ended > when):
                counts[index] += 1
    chart = line_chart("Sessions open", starts, [Series("open", counts)], step=True)
    return chart, int(counts[-1])


def service_health(request: HttpRequest) -> HttpResponse:
    """The page (staff only: the admin site wraps it in its login and permission checks)."""
    from django.contrib import admin

    context = {
        **admin.site.each_context(request),
        "title": "Service health",
        "health": collect(),
    }
    return TemplateResponse(request, "admin/service_health.html", context)
