"""What operators' tools cost: recording a turn's metrics and log line, one scrape of /metrics as
the processes of a machine pile up files in METRICS_DIR, and the admin's health page over a
day of turns.

Runs in this process against a temporary METRICS_DIR and a temporary SQLite database (migrated
here), so it needs nothing else running:

    .venv/bin/python bench/operators.py [--turns 1000 10000] [--processes 1 10 50]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(tempfile.mkdtemp(prefix="echoproject-bench-operators-"))
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "echoproject.settings",
        "VAR_DIR": str(WORK / "var"),
        "METRICS_DIR": str(WORK / "metrics"),
        "DATABASE_URL": f"sqlite:///{WORK / 'db.sqlite3'}",
    }
)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django.utils import timezone  # noqa: E402

from chat import health_page, observe  # noqa: E402
from chat.models import ChatSession, Message, Role  # noqa: E402
from echoproject import metrics  # noqa: E402

TIMINGS = {
    "queue_ms": 12.0,
    "asr_ms": 310.0,
    "llm_ms": 420.0,
    "llm_first_ms": 380.0,
    "tts_ms": 60.0,
    "tts_first_chunk_ms": 45.0,
    "tts_first_ms": 430.0,
}


def per_call_us(func: object, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        func()  # type: ignore[operator]
    return (time.perf_counter() - started) / repeat * 1e6


def record_turn_cost(repeat: int) -> dict[str, float]:
    logging.getLogger("chat.turns").disabled = True  # the log line's formatting costs apart
    metrics_only = per_call_us(lambda: observe.record_turn("s", 1, "text", TIMINGS, ""), repeat)
    logging.getLogger("chat.turns").disabled = False
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    from echoproject.logs import JsonFormatter, TextFormatter

    results = {"record_turn_metrics_us": round(metrics_only, 1)}
    for name, formatter in (("text", TextFormatter()), ("json", JsonFormatter())):
        handler.setFormatter(formatter)
        logger = logging.getLogger("chat.turns")
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
        results[f"record_turn_with_{name}_line_us"] = round(
            per_call_us(lambda: observe.record_turn("s", 1, "text", TIMINGS, ""), repeat), 1
        )
    results["session_open_close_us"] = round(
        per_call_us(
            lambda: (metrics.session_opened("voice"), metrics.session_closed("voice", "websocket")),
            repeat,
        ),
        1,
    )
    return results


def scrape_cost(processes: int) -> dict[str, float]:
    """/metrics over the files of `processes` processes (those that ended leave their counters
    and histograms behind: prefork children replaced, web processes restarted): this process
    records a realistic set of series, and its files are copied under other pids."""
    import shutil

    directory = Path(os.environ["METRICS_DIR"])
    for kind in ("text", "realtime", "upload"):
        observe.record_turn("s", 1, kind, TIMINGS, "")
    metrics.provider_error("ERR_LLM_FAILED")
    metrics.render_speed(1.0, 2.0)
    own = [p for p in directory.glob(f"*_{os.getpid()}.db") if not p.name.startswith("gauge")]
    for path in directory.glob("*.db"):
        if path not in own:
            path.unlink()
    for number in range(1, processes):
        for path in own:
            shutil.copy(path, path.with_name(path.name.replace(str(os.getpid()), f"9{number:06d}")))
    files = len(list(directory.glob("*.db")))
    times = []
    for _ in range(20):
        started = time.perf_counter()
        body = metrics.exposition()
        times.append((time.perf_counter() - started) * 1000)
    return {
        "processes": processes,
        "files": files,
        "bytes": len(body),
        "scrape_ms_median": round(statistics.median(times), 2),
    }


def health_page_cost(turns: int) -> dict[str, float]:
    Message.objects.all().delete()
    ChatSession.objects.all().delete()
    now = timezone.now()
    sessions = [
        ChatSession(mode="voice", started_at=now - timedelta(minutes=i % 1440), ended_at=now)
        for i in range(max(1, turns // 10))
    ]
    ChatSession.objects.bulk_create(sessions)
    rows = []
    for i in range(turns):
        at = now - timedelta(seconds=(i * 86400) // turns)
        session = sessions[i % len(sessions)]
        rows.append(
            Message(session=session, role=Role.USER, created_at=at, timings={"asr_ms": 300.0})
        )
        rows.append(
            Message(
                session=session,
                role=Role.ASSISTANT,
                created_at=at,
                timings=TIMINGS,
                duration_ms=3000,
                error_code="ERR_TTS_FAILED" if i % 50 == 0 else "",
            )
        )
    Message.objects.bulk_create(rows, batch_size=2000)
    request = RequestFactory().get("/admin/health/")
    from django.contrib.auth.models import User

    request.user = User(is_staff=True, is_active=True, is_superuser=True)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        response = health_page.service_health(request)
        response.render()
        times.append((time.perf_counter() - started) * 1000)
    return {
        "turns": turns,
        "sessions": len(sessions),
        "page_ms_median": round(statistics.median(times), 1),
        "page_kb": round(len(response.content) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--repeat", type=int, default=20000)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    print(json.dumps(record_turn_cost(args.repeat)))
    for turns in args.turns:
        print(json.dumps(health_page_cost(turns)))
    for processes in args.processes:
        print(json.dumps(scrape_cost(processes)))


if __name__ == "__main__":
    main()
