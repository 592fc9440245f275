"""Celery workers yield the CPU to web processes on a machine they share (WORKER_NICE)."""

from __future__ import annotations

import os
import subprocess

from tests.procs import Proc, nice_of


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def test_worker_and_its_pool_run_at_a_lower_priority_than_the_web(celery_worker: Proc) -> None:
    own = os.nice(0)  # this test process stands for the web process's priority
    worker = celery_worker.popen.pid
    pool = _children(worker)
    assert pool, "the prefork pool has processes"
    for pid in [worker, *pool]:
        assert nice_of(pid) == min(19, own + 10), pid
