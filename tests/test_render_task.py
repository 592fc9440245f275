"""A real Celery render worker renders a reply end to end and reports every step."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.core.files.storage import default_storage

from celery_app import worker_queue
from chat.models import Message
from chat.storage import list_session_files, session_path
from rendering import coordination
from rendering.control import cancel_render
from rendering.scheduler import submit_render
from rendering.tasks import render_video
from tests.audio import speak, write_wav
from tests.fixtures_rendering import EventListener, make_reply
from tests.procs import Proc

pytestmark = pytest.mark.django_db(transaction=True)

SHORT = "Paris is lovely in spring. Shall we go?"
LONG = (
    "Let me tell you about a long journey. We start in Lisbon by the sea, then take the "
    "night train to Madrid, walk through the old town, and ride on to Barcelona. From "
    "there a ferry crosses to Genoa, and a slow train follows the coast all the way to Rome."
)


def video_files(session: Any, message: Message) -> list[str]:
    prefix = session_path(session.id, f"video/{message.pk}/")
    return [name for name in list_session_files(session.id) if name.startswith(prefix)]


def test_render_worker_delivers_queued_progress_segments_and_one_ready(
    render_worker: Proc, video_session: Any, listener: EventListener, render_redis: Any
) -> None:
    message = make_reply(video_session, speak(SHORT))
    ticket = submit_render(message.pk)
    ready = listener.until("video_ready", timeout=90)
    listener.drain(1.0)
    queued = listener.of("video_queued")
    assert queued == [
        {
            "type": "video_queued",
            "task_id": ticket.task_id,
            "message_id": message.pk,
            "position": ticket.position,
        }
    ]
    assert listener.types()[0] == "video_queued"
    progress = listener.of("video_progress")
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 100
    assert progress[0]["stage"] == "started" and progress[-1]["stage"] == "done"
    assert {"started", "rendering", "encoding", "done"} <= {p["stage"] for p in progress}
    assert {p["stage"] for p in progress} <= {"started", "rendering", "encoding", "done"}
    segments = listener.of("video_segment")
    assert [s["index"] for s in segments] == list(range(len(segments))) and segments
    assert segments[0]["start_ms"] == 0 and all(s["task_id"] == ticket.task_id for s in segments)
    assert sum(s["duration_ms"] for s in segments) == ready["duration_ms"]
    assert listener.types().index("video_segment") < listener.types().index("video_ready")
    assert len(listener.of("video_ready")) == 1 and ready["task_id"] == ticket.task_id
    message.refresh_from_db()
    assert message.render_task_id == ticket.task_id
    # unguessable names, served through signed URLs (chat.storage, echoproject.media)
    assert re.fullmatch(rf".*/video/{message.pk}/video-[0-9a-f]{{20}}\.mp4", message.video)
    assert ready["video_url"].split("?")[0].endswith(message.video)
    assert "s=" in ready["video_url"].split("?")[1]
    assert message.duration_ms == ready["duration_ms"] and message.timings["render"] > 0
    assert default_storage.exists(message.video)
    for segment in segments:
        path = segment["url"].split("?")[0]
        assert re.fullmatch(
            rf".*/video/{message.pk}/segment-{segment['index']:03d}-[0-9a-f]{{20}}\.mp4", path
        )


def test_running_a_render_twice_overwrites_and_announces_once(
    render_worker: Proc, video_session: Any, listener: EventListener, render_redis: Any
) -> None:
    message = make_reply(video_session, speak("Twice is nice."))
    first = render_video.apply_async((message.pk,), task_id="twice-1")
    listener.until("video_ready", timeout=60)
    first.get(timeout=30)
    files = sorted(video_files(video_session, message))
    coordination.client().delete(f"{coordination.PREFIX}progress:twice-2")
    render_video.apply_async((message.pk,), task_id="twice-2").get(timeout=60)
    coordination.client().delete(
        f"{coordination.PREFIX}once:ready:{message.pk}"
    )  # a genuine re-run
    render_video.apply_async((message.pk,), task_id="twice-3").get(timeout=60)
    listener.drain(1.0)
    assert sorted(video_files(video_session, message)) == files
    assert len(listener.of("video_ready")) == 2  # the guard held for the redelivery (twice-2)
    assert {e["index"] for e in listener.of("video_segment")} == set(range(len(files) - 1))
    assert len(listener.of("video_segment")) == len(files) - 1  # each segment announced once


def test_cancel_stops_the_render_and_deletes_its_files(
    render_worker: Proc, video_session: Any, listener: EventListener, render_redis: Any
) -> None:
    message = make_reply(video_session, speak(LONG))
    ticket = submit_render(message.pk)
    listener.until("video_segment", timeout=60)
    cancel_render(ticket.task_id)
    cancelled_at = time.monotonic()
    listener.drain(3.0)
    assert not listener.of("video_ready")
    after = [e for e in listener.seen if e["type"] == "video_segment"]
    assert len(after) <= 2, "the loop stops within one segment"
    deadline = cancelled_at + 10
    while video_files(video_session, message) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert video_files(video_session, message) == []
    assert max(p["progress"] for p in listener.of("video_progress")) < 100
    # the worker is free again for the next render
    other = make_reply(video_session, speak("Next one."))
    submit_render(other.pk)
    listener.until("video_ready", timeout=60)


def test_worker_heartbeat_shows_its_state_while_rendering(
    render_worker: Proc, video_session: Any, listener: EventListener, render_redis: Any
) -> None:
    def me() -> dict[str, Any]:
        (beat,) = [
            w for w in coordination.read_workers() if w["nodename"] == render_worker.nodename
        ]
        return beat

    deadline = time.monotonic() + 10
    while not coordination.read_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    # idle, with nothing waiting on its own queue (an avatar to prepare, a test's leftover)
    own = worker_queue(render_worker.nodename)
    ready = poll(
        me, lambda beat: beat["state"] == "idle" and not render_redis.llen(own), timeout=60
    )
    assert ready["device"] == "cpu" and ready["backend"] == "lite"
    message = make_reply(video_session, speak(LONG))
    task_id = f"watched-{message.pk}"
    render_video.apply_async(
        (message.pk,), task_id=task_id, queue=worker_queue(render_worker.nodename)
    )
    busy = poll(me, lambda beat: beat["state"] == "busy")
    assert busy["current_task"] == task_id and busy["backlog"] == 1
    listener.until("video_ready", timeout=60)
    idle = poll(me, lambda beat: beat["state"] == "idle")
    assert idle["backlog"] == 0 and video_session.avatar_id in idle["warm_avatars"]


def poll(read: Any, ok: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value) or time.monotonic() > deadline:
            assert ok(value), value
            return value
        time.sleep(0.05)


@pytest.mark.parametrize("problem", ["missing image", "corrupt audio", "empty audio"])
def test_bad_inputs_fail_with_err_render_failed(
    render_worker: Proc,
    video_session: Any,
    listener: EventListener,
    render_redis: Any,
    problem: str,
    tmp_path: Any,
) -> None:
    if problem == "missing image":
        message = make_reply(video_session, speak("Hi."))
        default_storage.delete(video_session.avatar.image.name)
    elif problem == "corrupt audio":
        message = make_reply(video_session, b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(512))
    else:
        import numpy as np

        message = make_reply(video_session, write_wav(tmp_path / "e.wav", np.zeros(0), 16000))
    # the turn's ref comes back on the error (kept with the user's message, not sent along)
    message.reply_to = Message.objects.create(session=video_session, role="user", ref="in lyon")
    message.save(update_fields=["reply_to"])
    submit_render(message.pk, "in lyon")
    error = listener.until("error", timeout=60)
    assert error["code"] == "ERR_RENDER_FAILED" and error["retryable"] is False
    assert error["ref"] == "in lyon"
    words = {"missing image": "avatar image", "corrupt audio": "cannot be decoded"}
    words["empty audio"] = "empty"
    assert words[problem] in error["message"]
    listener.drain(0.5)
    assert not listener.of("video_ready")
    message.refresh_from_db()
    assert message.error_code == "ERR_RENDER_FAILED" and words[problem] in message.error_message


def test_render_of_an_ended_session_does_nothing(
    render_worker: Proc, video_session: Any, listener: EventListener, render_redis: Any
) -> None:
    from django.utils import timezone

    message = make_reply(video_session, speak("Too late."))
    video_session.ended_at = timezone.now()
    video_session.save(update_fields=["ended_at"])
    result = render_video.apply_async((message.pk,)).get(timeout=60)
    assert result == {"status": "cancelled"}
    listener.drain(0.5)
    assert not [e for e in listener.seen if e["type"].startswith("video_")]
    assert video_files(video_session, message) == []
