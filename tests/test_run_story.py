"""The README's run command (scripts/run.sh) starts every process of the Procfile where it says;
Ctrl-C stops them all. A process that dies is started again (the others keep running, and
beat's cleanup ends the sessions a killed web process held); one that keeps dying stops the
stack with one line naming it. The production role files (deploy/systemd) run the same."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websockets
from django.conf import settings

from chat.models import ChatSession
from tests.fixtures_sessions import Client, run
from tests.isolation import separate_redis
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
    with separate_redis() as redis_url:
        port, flower_port = free_port(), free_port()
        # a Redis database of its own: its workers must not take the tasks of other tests
        env = child_env(
            PORT=str(port),
            FLOWER_PORT=str(flower_port),
            VAR_DIR=str(tmp_path),
            REDIS_URL=redis_url,
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
            assert status == 200 and len(json.loads(body)["avatars"]) == 3
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


async def session_then_kill(url: str, pid: int) -> str:
    """A voice session with the speech file of one text turn, open when `pid` is SIGKILLed."""
    async with websockets.connect(url, max_size=None) as ws:
        client = Client(ws)
        init = await client.until("init", fail_on_error=True)
        await client.send(type="text_message", text="Hello there.")
        await client.until("tts_complete", timeout=60, fail_on_error=True)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(websockets.ConnectionClosed):
            await client.recv(timeout=30)
    return init["session_id"]


@pytest.mark.django_db(transaction=True)
def test_a_killed_web_process_is_started_again_and_the_others_keep_running(
    log_dir, tmp_path
) -> None:
    with separate_redis() as redis_url:
        port, flower_port = free_port(), free_port()
        env = child_env(
            PORT=str(port),
            FLOWER_PORT=str(flower_port),
            VAR_DIR=str(tmp_path),
            REDIS_URL=redis_url,
            WEB_PRESENCE_TTL_S="2",  # beat's cleanup ends the killed process's session soon
            CLEANUP_INTERVAL_S="2",
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
            session_id = run(
                session_then_kill(f"ws://127.0.0.1:{port}/ws/chat/?mode=voice", killed)
            )
            honcho.wait_until(
                lambda: (
                    "respawn: web killed by SIGKILL; starting it again" in honcho.log_tail(20000)
                ),
                timeout=30,
                what="restarting web",
            )
            honcho.wait_until(healthy, timeout=90, what="healthy again")
            after = process_tree(honcho.popen.pid)
            assert web_process(after) != killed and not alive(killed)
            assert [pid for pid in others if not alive(pid)] == []  # nothing else was restarted
            assert "stopped (rc=" not in honcho.log_tail(20000)  # honcho stopped no process

            def ended() -> bool:
                return ChatSession.objects.filter(pk=session_id, end_reason="server_lost").exists()

            honcho.wait_until(ended, timeout=60, what="ending the killed process's session")
            files = Path(settings.MEDIA_ROOT) / "sessions" / session_id
            # the cleanup marks the session ended first, then deletes its files
            honcho.wait_until(
                lambda: not list(files.rglob("*.*")),
                timeout=30,
                what="deleting the session's files",
            )
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


UNITS = ROOT / "deploy" / "systemd"
ROLES = {  # unit -> the Procfile line it runs in production
    "echoproject-web.service": "web",
    "echoproject-speech.service": "speech",
    "echoproject-render@.service": "render",
    "echoproject-beat.service": "beat",
    "echoproject-flower.service": "flower",
}


def unit_settings(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, value = line.split("=", 1)
            values.setdefault(name, []).append(value)
    return values


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name: cmd.split() for name, cmd in (line.split(": ", 1) for line in lines if line)}


def test_every_role_has_a_systemd_unit_that_restarts_it_and_runs_its_procfile_command() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(ROLES)
    commands = procfile()
    for unit, role in ROLES.items():
        values = unit_settings((UNITS / unit).read_text())
        assert values["Restart"] in (["always"], ["on-failure"]), unit
        assert values["EnvironmentFile"] == ["/etc/echoproject/env"], unit
        (exec_start,) = values["ExecStart"]
        program, *args = exec_start.split()
        assert program.startswith("/opt/echoproject/.venv/bin/"), unit
        # the Procfile's command after `bash scripts/respawn.sh <role>`: same program, same
        # subcommand and queue
        wrapped = commands[role]
        assert wrapped[:3] == ["bash", "scripts/respawn.sh", role]
        expected_program, *expected_args = wrapped[3:]
        assert program.rsplit("/", 1)[1] == expected_program, unit
        assert args[:3] == expected_args[:3], unit
        if "-Q" in expected_args:
            queue = expected_args[expected_args.index("-Q") + 1]
            assert args[args.index("-Q") + 1] == queue, unit
        assert (ROOT / ".venv" / "bin" / expected_program).exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_units_pass_systemd_analyze_verify_against_this_checkout(tmp_path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("LOG_LEVEL=info\n")
    for unit in ROLES:
        text = (UNITS / unit).read_text().replace("/opt/echoproject", str(ROOT))
        text = text.replace("/etc/echoproject/env", str(env_file))
        (tmp_path / unit).write_text(text)
    units = [str(tmp_path / u) for u in ROLES if "@" not in u]
    units.append(str(tmp_path / "echoproject-render@0.service"))  # an instance of the template
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not executable" not in result.stderr
