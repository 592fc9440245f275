"""`spawn`: work on reusable daemon threads that never makes its caller wait for a thread;
`ThreadBridge`: what threads post reaches the loop complete and in order."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from chat.providers import bridge
from chat.providers.base import TTSError
from chat.providers.bridge import ThreadBridge, spawn
from harness.procs import wait_for


def test_a_job_runs_with_its_arguments_and_can_be_joined() -> None:
    seen: list[tuple[int, str, str]] = []
    job = spawn(lambda a, b: seen.append((a, b, threading.current_thread().name)), 1, "x", name="j")
    job.join(5)
    assert not job.is_alive()
    assert seen == [(1, "x", "j")]


def test_threads_are_reused_once_idle() -> None:
    idents: list[int] = []
    before = {thread.ident for thread in threading.enumerate()}  # idle ones of earlier tests
    for _ in range(5):
        spawn(lambda: idents.append(threading.get_ident()), name="reuse").join(5)
    assert len(idents) == 5
    assert len(set(idents) - before) <= 1, "each job got a new thread"


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


def test_a_bridge_carries_every_item_from_several_threads_in_order_then_the_end() -> None:
    """Items posted while a wake-up of the loop is already on its way ride along with it:
    none is lost or reordered, and the end comes after the last of them."""

    async def main() -> tuple[list[tuple[int, int]], int]:
        bridge: ThreadBridge[tuple[int, int]] = ThreadBridge()
        loop = asyncio.get_running_loop()
        wakeups = 0
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted(*args: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return call_soon_threadsafe(*args)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]

        def produce(n: int) -> None:
            for i in range(2000):
                bridge.put((n, i))

        producers = [threading.Thread(target=produce, args=(n,)) for n in range(3)]
        for producer in producers:
            producer.start()
        got = [await bridge.get(5.0, lambda: TTSError("nothing came")) for _ in range(6000)]
        for producer in producers:
            producer.join()
        bridge.end()  # from the loop's own thread: delivered at once
        with pytest.raises(StopAsyncIteration):
            await bridge.get(1.0, lambda: TTSError("no end"))
        return got, wakeups

    got, wakeups = asyncio.run(main())
    for n in range(3):
        assert [i for m, i in got if m == n] == list(range(2000))
    assert wakeups < 6000  # bursts shared their wake-ups


def test_a_bridge_times_out_when_nothing_comes() -> None:
    async def main() -> None:
        bridge: ThreadBridge[bytes] = ThreadBridge()
        threading.Timer(0.05, bridge.put, args=(b"late",)).start()
        with pytest.raises(TTSError, match="nothing"):
            await bridge.get(0.01, lambda: TTSError("nothing within 10 ms"))
        with pytest.raises(StopAsyncIteration):  # a timed-out bridge is done
            await bridge.get(1.0, lambda: TTSError("again"))

    asyncio.run(main())
