"""Gives each test run its own Redis database, files and SQLite database.

Loaded as a pytest plugin (`-p tests.isolation`) so it runs before Django reads its settings.
Several runs on one machine (developers, CI) then never share queues, groups or files, and the
developer's own provider keys never leak into the tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.procs import claim_redis_db, release_redis_db

REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")


def claim_redis_url() -> str:
    """A Redis database of this run's own, emptied, held until the run ends."""
    url = f"{REDIS_BASE}/{claim_redis_db()}"
    redis.Redis.from_url(url).flushdb()
    return url


@contextmanager
def separate_redis() -> Iterator[str]:
    """Another Redis database of this run's own, for a second, separate stack of processes;
    emptied and given back afterwards, so that a run holds only the databases it uses (there
    are 15 for every run and benchmark on the machine)."""
    number = claim_redis_db()
    url = f"{REDIS_BASE}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        release_redis_db(number)


def _isolate() -> None:
    for name in list(os.environ):
        if name.startswith(("DASHSCOPE_", "LLM_", "S3_", "CHAT_", "TURN_")) or name in {
            "DATABASE_URL",
            "ASR_BACKEND",
            "TTS_BACKEND",
            "RENDER_BACKEND",
            "ALLOWED_HOSTS",
            "DEBUG",
            "SECRET_KEY",
        }:
            del os.environ[name]
    work = tempfile.mkdtemp(prefix="echoproject-test-")
    if not os.environ.get("TEST_KEEP_WORK"):  # keep logs and files for a post-mortem
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    url = claim_redis_url()
    os.environ.update(
        {
            "REDIS_URL": url,
            "VAR_DIR": f"{work}/var",
            "MEDIA_ROOT": f"{work}/media",
            "TEST_SQLITE_PATH": f"{work}/test.sqlite3",
            # preparing avatars (1-2 s of a render worker's CPU per avatar saved) only where a
            # test asks for it: the `preparing_avatars` fixture, tests/test_render_idle.py
            "RENDER_PREPARE_AVATARS": "false",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    os.environ["TEST_WORK_DIR"] = work


_isolate()
