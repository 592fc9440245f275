"""Fixtures shared by the whole suite. Process fixtures stop what they start."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.procs import Proc, start_celery_worker

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
