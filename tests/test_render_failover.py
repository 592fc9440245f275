"""A render worker killed mid-render: another worker redoes the task, the client still gets
one `video_ready` and progress that never goes back."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from django.core.files.storage import default_storage

from celery_app import worker_queue
from chat.models import Message
from rendering import coordination
from rendering.tasks import render_video
from tests.audio import speak
from tests.fixtures_rendering import EventListener, make_reply, start_render_worker
from tests.procs import Proc

pytestmark = pytest.mark.django_db(transaction=True)

LONG = (
    "Here is the plan for the whole week. On Monday we walk along the river and visit the "
    "old market. On Tuesday we take the train into the mountains and stay in a small village."
)


@pytest.fixture
def two_workers(django_db_setup: None, log_dir: Path) -> Iterator[tuple[Proc, Proc]]:
    # the broker's own redelivery (CELERY_VISIBILITY_TIMEOUT_S, 900 s) is far off: the task
    # moves on because the survivor sees the doomed worker's heartbeat stop
    first = start_render_worker(log_dir, "render-doomed")
    try:
        second = start_render_worker(log_dir, "render-survivor")
    except Exception:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def test_sigkill_mid_render_is_redone_by_another_worker_with_one_video_ready(
    two_workers: tuple[Proc, Proc],
    video_session: Any,
    listener: EventListener,
    render_redis: Any,
) -> None:
    doomed, _survivor = two_workers  # or any other render worker of the test run
    message = make_reply(video_session, speak(LONG))
    task_id = f"failover-{message.pk}"
    Message.objects.filter(pk=message.pk).update(render_task_id=task_id)
    render_video.apply_async((message.pk,), task_id=task_id, queue=worker_queue(doomed.nodename))

    listener.until("video_segment", timeout=60)
    doomed.signal(signal.SIGKILL)
    doomed.popen.wait(10)
    ready = listener.until("video_ready", timeout=120)
    listener.drain(2.0)

    assert ready["task_id"] == task_id and len(listener.of("video_ready")) == 1
    values = [e["progress"] for e in listener.of("video_progress")]
    assert values == sorted(values) and values[-1] == 100
    indices = [e["index"] for e in listener.of("video_segment")]
    assert sorted(indices) == list(range(len(indices))), "each segment announced once"
    assert doomed.popen.returncode == -signal.SIGKILL
    dead = [w for w in coordination.read_workers(include_stale=True) if not w["alive"]]
    assert doomed.nodename in {w["nodename"] for w in dead}
    message.refresh_from_db()
    assert default_storage.exists(message.video) and not message.error_code, message.error_message
    with default_storage.open(message.video) as handle, av.open(handle) as container:
        assert container.streams.video and container.streams.audio
        frames = sum(1 for _ in container.decode(video=0))
    assert frames * 40 == ready["duration_ms"]
