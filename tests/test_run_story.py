"""The README's run command (scripts/run.sh) starts every process of the Procfile where it says;
Ctrl-C stops them all."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.isolation import claim_redis_url
from tests.procs import Proc, child_env, free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def children_of(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


@pytest.mark.django_db(transaction=True)
def test_procfile_runs_every_process_and_ctrl_c_stops_them(log_dir, tmp_path) -> None:
    port, flower_port = free_port(), free_port()
    # a Redis database of its own: its workers must not take the tasks of other tests
    env = child_env(
        PORT=str(port),
        FLOWER_PORT=str(flower_port),
        VAR_DIR=str(tmp_path),
        REDIS_URL=claim_redis_url(),
    )
    # the README's run command itself (set-up is a no-op here: the test run just did it)
    honcho = Proc(
        "run", ["bash", "scripts/run.sh"], {**env, "ADMIN_PASSWORD": "pw-run-story"}, log_dir
    )
    try:

        def healthy() -> bool:
            status, body = get(f"http://127.0.0.1:{port}/healthz")
            return status == 200 and json.loads(body)["status"] == "ok"

        honcho.wait_until(healthy, timeout=90, what="healthy")
        status, body = get(f"http://127.0.0.1:{port}/api/avatars")
        assert status == 200 and len(json.loads(body)["avatars"]) == 2
        honcho.wait_until(
            lambda: get(f"http://127.0.0.1:{flower_port}/")[0] == 200,
            timeout=60,
            what="serving flower",
        )
        log = honcho.log_tail(20000)
        assert f"app:    http://127.0.0.1:{port}/" in log and f"127.0.0.1:{flower_port}/" in log
        for process in ("web.1", "speech.1", "render.1", "beat.1", "flower.1"):
            assert process in log
        processes = children_of(honcho.popen.pid)
        assert len(processes) == 5
        honcho.signal(signal.SIGINT)
        honcho.popen.wait(30)
        time.sleep(0.5)
        alive = [
            pid
            for pid in processes
            if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0
        ]
        assert alive == []
    finally:
        honcho.stop()
