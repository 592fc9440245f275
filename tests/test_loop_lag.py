"""The web process's event-loop lag on /metrics (`echo_event_loop_lag_seconds`): sampled twice a
second by every web process, and a loop held busy shows in it."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client import REGISTRY

from echoproject.web import LoopLag
from tests.fixtures_realtime import run
from tests.procs import Proc, child_env, free_port, port_open

NAME = "echo_event_loop_lag_seconds"


def _samples() -> tuple[float, float]:
    """(samples so far, those over 100 ms) in this process."""
    count = REGISTRY.get_sample_value(f"{NAME}_count") or 0.0
    quick = REGISTRY.get_sample_value(f"{NAME}_bucket", {"le": "0.1"}) or 0.0
    return count, count - quick


def test_a_loop_held_busy_shows_in_the_lag() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        LoopLag(loop.call_later, time.monotonic, every_s=0.05).start()
        await asyncio.sleep(0.3)  # a loop with nothing to do: its timers run on time
        time.sleep(0.3)  # noqa: ASYNC251 - the loop held, as a blocking call would
        await asyncio.sleep(0.12)

    count0, slow0 = _samples()
    run(body())
    count, slow = _samples()
    assert count - count0 >= 6  # about one per 50 ms
    assert slow - slow0 >= 1  # the timer due while the loop was held ran > 100 ms late
    assert (count - count0) - (slow - slow0) >= 4  # the others were not


def test_every_web_process_reports_its_loop_lag(log_dir: Path) -> None:
    port = free_port()
    env = child_env(WEB_PROCESSES="1", HOST="127.0.0.1", PORT=str(port))
    web = Proc("web-loop-lag", [sys.executable, "-m", "echoproject.web"], env, log_dir)
    try:
        web.wait_until(lambda: port_open(port), what="the web process")

        def sampled() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            lines = [line for line in text.splitlines() if line.startswith(f"{NAME}_count")]
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

        web.wait_until(lambda: sampled() >= 3, what="three samples of the loop's lag")
    finally:
        web.stop()
