"""The README's run command (scripts/run.sh) starts every process of the Procfile where it says;
Ctrl-C stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.isolation import claim_redis_url
from tests.procs import BIN, ROOT, Proc, child_env, free_port


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


def process_tree(root: int) -> dict[int, str]:
    """Every descendant of `root`: pid -> command line."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        pid, ppid, *rest = line.split(None, 2)
        args = rest[0] if rest else ""
        children.setdefault(int(ppid), []).append((int(pid), args))
    tree, todo = {}, [root]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            tree[pid] = args
            todo.append(pid)
    return tree


def alive(pid: int) -> bool:
    return subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0


def web_process(tree: dict[int, str]) -> int:
    (pid,) = [p for p, args in tree.items() if "echoproject.web" in args and "respawn" not in args]
    return pid


@pytest.mark.django_db(transaction=True)
def test_a_killed_web_process_is_started_again_and_the_others_keep_running(
    log_dir, tmp_path
) -> None:
    port, flower_port = free_port(), free_port()
    env = child_env(
        PORT=str(port),
        FLOWER_PORT=str(flower_port),
        VAR_DIR=str(tmp_path),
        REDIS_URL=claim_redis_url(),
    )
    honcho = Proc(
        "run-respawn",
        ["bash", "scripts/run.sh"],
        {**env, "ADMIN_PASSWORD": "pw-run-story"},
        log_dir,
    )
    try:

        def healthy() -> bool:
            status, body = get(f"http://127.0.0.1:{port}/healthz")
            return status == 200 and json.loads(body)["status"] == "ok"

        honcho.wait_until(healthy, timeout=90, what="healthy")
        before = process_tree(honcho.popen.pid)
        killed = web_process(before)
        others = [pid for pid in before if pid != killed]
        os.kill(killed, signal.SIGKILL)
        honcho.wait_until(
            lambda: "respawn: web killed by SIGKILL; starting it again" in honcho.log_tail(20000),
            timeout=30,
            what="restarting web",
        )
        honcho.wait_until(healthy, timeout=90, what="healthy again")
        after = process_tree(honcho.popen.pid)
        assert web_process(after) != killed and not alive(killed)
        assert [pid for pid in others if not alive(pid)] == []  # nothing else was restarted
        assert "stopped (rc=" not in honcho.log_tail(20000)  # honcho stopped no process
        everything = process_tree(honcho.popen.pid)
        honcho.signal(signal.SIGINT)
        honcho.popen.wait(30)
        deadline = time.monotonic() + 15  # pool children exit just after their worker
        while any(alive(pid) for pid in everything) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {pid: args for pid, args in everything.items() if alive(pid)} == {}
    finally:
        honcho.stop()


def test_a_process_that_keeps_dying_stops_the_stack_with_one_line_naming_it(
    log_dir, tmp_path
) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "steady: sleep 120\n"
        "flaky: bash scripts/respawn.sh flaky python -c 'import sys; sys.exit(3)'\n"
    )
    honcho = Proc(
        "run-flaky",
        [str(BIN / "honcho"), "-f", str(procfile), "-d", str(ROOT), "start"],
        child_env(),
        log_dir,
    )
    try:
        assert honcho.popen.wait(60) != 0  # the whole stack stopped
        log = honcho.log_tail(20000)
    finally:
        honcho.stop()
    assert log.count("respawn: flaky exited with status 3; starting it again in 1 s") == 5
    assert "respawn: flaky exited with status 3, its 6th death in 60 s; giving up" in log
    assert "sending SIGTERM to steady" in log
