"""Fixtures shared by the whole suite. Process fixtures stop what they start."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings

from tests.procs import Proc, start_celery_worker

T = TypeVar("T")

# Each area keeps its fixtures in its own module.
pytest_plugins = [
    "tests.fixtures_providers",
    "tests.fixtures_rendering",
    "tests.fixtures_realtime",
    "tests.fixtures_sessions",
    "tests.fixtures_browser",
]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = Path(os.environ["TEST_WORK_DIR"]) / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, django_db_blocker: object, log_dir: Path
) -> Iterator[Proc]:
    """A real Celery worker on the speech and render queues, against the test database."""
    proc = start_celery_worker(log_dir, "speech,render", "test-worker")
    yield proc
    proc.stop()


@pytest.fixture
def media_root() -> Iterator[Path]:
    root = Path(settings.MEDIA_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def avatars(db: None, media_root: Path) -> list:
    from django.core.management import call_command

    from avatars.models import Avatar

    call_command("load_avatars", verbosity=0)
    return list(Avatar.objects.order_by("slug"))


@pytest.fixture
def preparing_avatars(settings: Any) -> None:
    """Saving an avatar asks the render workers to prepare it, as in production (off in the
    other tests, see tests/isolation.py). List it before `live_avatars`."""
    settings.RENDER_PREPARE_AVATARS = True


@pytest.fixture
def on_loop() -> Iterator[Callable[[Coroutine[Any, Any, T]], T]]:
    """Runs coroutines on one event loop that lives through the test, on a thread of its own,
    as the web process's loop lives through many sentences; at the end the loop's DashScope
    clients are closed and the loop stops."""
    from chat.providers import reset_providers
    from chat.providers.cloud import close_dashscope_http_session

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(20)

    async def finish() -> None:
        """As `asyncio.run` ends: the loop's clients closed, its tasks cancelled and done."""
        await close_dashscope_http_session()
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    yield run
    reset_providers()
    run(finish())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
