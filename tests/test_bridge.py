"""`spawn`: work on reusable daemon threads that never makes its caller wait for a thread."""

from __future__ import annotations

import logging
import threading

import pytest

from chat.providers import bridge
from chat.providers.bridge import spawn
from harness.procs import wait_for


def test_a_job_runs_with_its_arguments_and_can_be_joined() -> None:
    seen: list[tuple[int, str, str]] = []
    job = spawn(lambda a, b: seen.append((a, b, threading.current_thread().name)), 1, "x", name="j")
    job.join(5)
    assert not job.is_alive()
    assert seen == [(1, "x", "j")]


def test_threads_are_reused_once_idle() -> None:
    idents: list[int] = []
    for _ in range(5):
        spawn(lambda: idents.append(threading.get_ident()), name="reuse").join(5)
    assert len(idents) == 5
    assert len(set(idents)) == 1, "each job got a new thread"


def test_jobs_that_block_do_not_hold_up_the_next() -> None:
    release = threading.Event()
    blocked = [spawn(release.wait, 10, name="blocker") for _ in range(3)]
    quick = spawn(lambda: None, name="quick")
    quick.join(5)
    try:
        assert not quick.is_alive(), "a job waited for busy threads"
        assert all(job.is_alive() for job in blocked)
    finally:
        release.set()
    for job in blocked:
        job.join(5)
        assert not job.is_alive()


def test_a_failing_job_is_logged_and_the_thread_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def fail() -> None:
        raise RuntimeError("boom in a job")

    with caplog.at_level(logging.ERROR, logger="chat.providers.bridge"):
        spawn(fail, name="failing").join(5)
    assert "failing failed" in caplog.text and "boom in a job" in caplog.text
    done: list[bool] = []
    spawn(lambda: done.append(True), name="after").join(5)
    assert done == [True]


def test_idle_threads_end(monkeypatch: pytest.MonkeyPatch) -> None:
    daemons = bridge._Daemons()
    monkeypatch.setattr(daemons, "IDLE_S", 0.2)
    names: list[str] = []
    jobs = []
    release = threading.Event()
    for index in range(4):
        job = bridge.Job(lambda: (names.append("ran"), release.wait(5)), (), f"idle-{index}")
        daemons.submit(job)
        jobs.append(job)
    assert wait_for(lambda: len(names) == 4), "four concurrent jobs did not all start"
    release.set()
    for job in jobs:
        job.join(5)

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if getattr(t, "_target", None) == daemons._work]

    assert len(workers()) == 4
    assert wait_for(lambda: daemons.waiting == 4)
    assert wait_for(lambda: not workers()), "idle threads stayed"
    assert daemons.waiting == 0
    # After they ended, work still runs.
    daemons.submit(job := bridge.Job(names.append, ("again",), "later"))
    job.join(5)
    assert names[-1] == "again"


def test_spawning_never_starts_a_thread_on_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Thread.start()` waits until the new thread runs; the caller (the event loop) must not."""
    spawn(lambda: None, name="warm").join(5)  # the starter thread exists from here on
    callers: list[int] = []
    original = threading.Thread.start

    def recording_start(thread: threading.Thread) -> None:
        callers.append(threading.get_ident())
        original(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    release = threading.Event()
    jobs = [spawn(release.wait, 5, name="busy") for _ in range(3)]  # new threads needed
    release.set()
    for job in jobs:
        job.join(5)
    assert threading.get_ident() not in callers
