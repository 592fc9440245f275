"""`cleanup_sessions` (run by beat) ends sessions whose consumer went silent or died, deleting
their files, and purges history past retention."""

from __future__ import annotations

import threading
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.test.utils import override_settings
from django.utils import timezone

from celery_app import app
from chat import sessions
from chat.models import ChatSession, Message
from chat.storage import delete_session_files

pytestmark = pytest.mark.django_db


def make_session(avatar, idle: timedelta, ended: timedelta | None = None) -> ChatSession:
    now = timezone.now()
    session = sessions.open_session(avatar, "voice", "en-US", {})
    ChatSession.objects.filter(pk=session.pk).update(
        last_activity_at=now - idle, ended_at=(now - ended) if ended else None
    )
    sessions.add_message(session.id, "user", "hello")
    default_storage.save(f"sessions/{session.id}/audio/user-1.wav", ContentFile(b"RIFF...."))
    return session


def test_idle_sessions_are_ended_and_their_files_deleted(avatars, media_root: Path) -> None:
    idle = make_session(avatars[0], timedelta(minutes=30))
    live = make_session(avatars[0], timedelta(seconds=5))
    out = StringIO()
    call_command("cleanup_sessions", stdout=out)
    assert "ended 1 idle session(s)" in out.getvalue()
    idle.refresh_from_db()
    live.refresh_from_db()
    assert idle.end_reason == "timeout" and idle.files_deleted == 1
    assert not (media_root / "sessions" / str(idle.id)).exists()
    assert live.ended_at is None and (media_root / "sessions" / str(live.id)).exists()


def test_history_past_retention_is_purged(avatars, media_root: Path) -> None:
    old = make_session(avatars[0], timedelta(days=40), ended=timedelta(days=40))
    recent = make_session(avatars[0], timedelta(days=2), ended=timedelta(days=2))
    with override_settings(SESSION_RETENTION_DAYS=30):
        result = sessions.cleanup()
    assert result == {"ended": 0, "orphaned": 0, "purged": 1}
    assert not ChatSession.objects.filter(pk=old.pk).exists()
    assert not Message.objects.filter(session_id=old.pk).exists()
    assert ChatSession.objects.filter(pk=recent.pk).exists()


def test_retention_zero_keeps_history(avatars, media_root: Path) -> None:
    make_session(avatars[0], timedelta(days=400), ended=timedelta(days=400))
    with override_settings(SESSION_RETENTION_DAYS=0):
        assert sessions.cleanup()["purged"] == 0


def test_beat_runs_the_cleanup_periodically() -> None:
    entry = app.conf.beat_schedule["cleanup-sessions"]
    assert entry["task"] == "chat.tasks.cleanup_sessions"
    assert entry["schedule"] == 60
    app.loader.import_default_modules()  # what a worker does at start
    assert "chat.tasks.cleanup_sessions" in app.tasks


def test_two_ends_of_one_session_at_once_both_succeed(media_root: Path) -> None:
    """The cleanup and the session's own consumer (or `user_data`) may end one session at the
    same moment: each deletes its files, neither fails on what the other removed first, and
    no directory is left behind."""
    session_id = "5f0c5b4e-4b1e-4f43-9d59-7c3e2b0a1d2e"
    failures: list[BaseException] = []

    def end(barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            delete_session_files(session_id)
        except BaseException as exc:  # noqa: BLE001 - the test reports what escaped
            failures.append(exc)

    for _ in range(60):  # a race: enough rounds that the old walk failed in most runs
        for turn in range(12):
            for kind in ("audio", "video"):
                default_storage.save(
                    f"sessions/{session_id}/{kind}/{turn}/x.bin", ContentFile(b"x")
                )
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=end, args=(barrier,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not failures, failures
        assert not (media_root / "sessions" / session_id).exists()
