"""What every Celery worker process of the service does at start, whatever its queues.

Workers yield the CPU to web processes: a web process serves every session's messages on one
event loop, where a few milliseconds of waiting for a core show in every session's latency,
while a turn on a worker (seconds of recognition or rendering) loses nothing it would notice.
On a machine shared by both (`make run`, small deployments) the kernel then runs the web
process first; on a machine of its own the worker's priority changes nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import worker_init, worker_process_shutdown
from django.conf import settings

log = logging.getLogger(__name__)


@worker_init.connect
def yield_cpu_to_web_processes(**kwargs: Any) -> None:
    """Lower this worker's scheduling priority by WORKER_NICE, before its pool's processes
    and threads start (they inherit it)."""
    if settings.WORKER_NICE:
        try:
            os.nice(settings.WORKER_NICE)
        except OSError as exc:
            log.warning("could not lower the worker's priority: %s", exc)


@worker_init.connect
def serve_metrics(**kwargs: Any) -> None:
    """WORKER_METRICS_ADDR: this worker's main process serves the machine's metrics (what its
    pool processes, and every other process of the service here, record)."""
    if settings.WORKER_METRICS_ADDR:
        from echoproject import metrics

        try:
            metrics.serve_for_worker(settings.WORKER_METRICS_ADDR)
        except OSError as exc:  # another worker of this machine serves the same sums already
            log.info("metrics not served at %s: %s", settings.WORKER_METRICS_ADDR, exc)


@worker_process_shutdown.connect
def forget_pool_process(**kwargs: Any) -> None:
    """A pool process that ends takes its live gauges with it."""
    from echoproject import metrics

    metrics.on_process_exit()
