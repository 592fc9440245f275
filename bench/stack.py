"""What the benchmarks share: a throw-away stack of the service's own processes.

Each benchmark runs on a Redis database of its own (claimed like a test run's, see
harness/procs.py) and a temporary SQLite database and media folder, so it never touches a running
service's or a test run's queues or data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.procs import celery_worker_args, claim_redis_db, free_port, port_open

ROOT = Path(__file__).resolve().parent.parent


class Stack:
    """Settings, database and processes of one benchmark run; `close()` stops and removes all."""

    def __init__(self, redis_db: int | None, prefix: str = "echo-bench-", **settings: str) -> None:
        if redis_db is None:
            redis_db = claim_redis_db()
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        self.env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
            "VAR_DIR": str(self.work / "var"),
            "MEDIA_ROOT": str(self.work / "media"),
            "DATABASE_URL": f"sqlite:///{self.work / 'db.sqlite3'}",
            "LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "WEB_PROCESSES": "1",  # the benchmarks read the serving process's own /proc
            **settings,
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def prepare(self) -> None:
        """An empty Redis database, a migrated database with the fixture avatars, and this
        process's own Django on the same settings (for reading results from the database)."""
        import redis

        for name in ("REDIS_URL", "VAR_DIR", "MEDIA_ROOT", "DATABASE_URL"):
            os.environ[name] = self.env[name]
        for name in ("DASHSCOPE_API_KEY", "ASR_BACKEND", "LLM_BACKEND", "TTS_BACKEND"):
            if name in self.env:
                os.environ[name] = self.env[name]
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
        redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()
        for command in (["migrate", "-v0"], ["load_avatars", "-v0"]):
            subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=ROOT,
                env=self.env,
                check=True,
                capture_output=True,
            )

    def start(self, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, cwd=ROOT, env={**self.env, **env})
        self.procs.append(proc)
        return proc

    def start_web(self, **env: str) -> tuple[subprocess.Popen[bytes], int]:
        """The web process (`python -m echoproject.web`) on a free port, once it listens."""
        port = free_port()
        web = self.start(
            [sys.executable, "-m", "echoproject.web", "-v", "0"],
            HOST="127.0.0.1",
            PORT=str(port),
            **env,
        )
        deadline = time.monotonic() + 60
        while not port_open(port):
            if time.monotonic() > deadline or web.poll() is not None:
                raise RuntimeError("the web process did not start")
            time.sleep(0.1)
        return web, port

    def start_worker(self, queues: str, name: str, concurrency: int = 1) -> None:
        """A Celery worker on `queues`, once it answers pings."""
        self.start(celery_worker_args(queues, f"{name}@%h", concurrency, "warning"))
        from celery_app import app

        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not start")

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.work, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank; NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
