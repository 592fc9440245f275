"""Several web processes on one port (WEB_PROCESSES): sessions spread over them, a killed one
is started again while the others keep serving, its sessions end at the next cleanup, and a
stop ends them all."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
import websockets
from django.core.management import call_command

from chat import presence
from chat.models import ChatSession
from tests.fixtures_sessions import Client, run
from tests.procs import Proc, child_env, free_port, pool_children, port_open

pytestmark = pytest.mark.usefixtures("live_avatars")

SESSIONS = 20  # connections hashed over two sockets: all on one has odds of 2 in a million


async def open_sessions(url: str, count: int) -> list[Client]:
    async def one() -> Client:
        client = Client(await websockets.connect(url, max_size=None, open_timeout=60))
        client.init = await client.until("init", fail_on_error=True, timeout=60)
        return client

    return list(await asyncio.gather(*(one() for _ in range(count))))


def serving_pids(clients: list[Client]) -> collections.Counter[int]:
    """How many of `clients`' sessions each web process holds."""
    return collections.Counter(pids_of(clients))


def test_two_web_processes_share_the_port_and_one_killed_leaves_the_other_serving(
    log_dir: Path,
) -> None:
    port = free_port()
    env = child_env(WEB_PROCESSES="2", WEB_PRESENCE_TTL_S="2", HOST="127.0.0.1", PORT=str(port))
    supervisor = Proc("web-processes", [sys.executable, "-m", "echoproject.web"], env, log_dir)
    url = f"ws://127.0.0.1:{port}/ws/chat/"
    try:
        supervisor.wait_until(
            lambda: port_open(port) and len(pool_children(supervisor.popen.pid)) == 2,
            what="two web processes",
        )
        first = sorted(pool_children(supervisor.popen.pid))

        async def body() -> dict:
            # wait until both children listen: every session of a batch on one is possible
            # only while the other is still starting
            deadline = time.monotonic() + 60
            while True:
                clients = await open_sessions(url, SESSIONS)
                spread = await asyncio.to_thread(serving_pids, clients)
                if len(spread) == 2 or time.monotonic() > deadline:
                    break
                for client in clients:
                    await client.ws.close()
            killed, survivor = sorted(spread)
            pids = await asyncio.to_thread(pids_of, clients)
            on_killed = [c for c, pid in zip(clients, pids, strict=True) if pid == killed]
            on_survivor = [c for c in clients if c not in on_killed]
            os.kill(killed, signal.SIGKILL)
            for client in on_killed:
                with pytest.raises(websockets.ConnectionClosed):
                    await client.recv(timeout=30)
            for number, client in enumerate(on_survivor):
                await client.send(type="ping", timestamp=number)
                assert (await client.until("pong"))["timestamp"] == number
            later = await open_sessions(url, 10)  # the port still serves every new session
            later_spread = await asyncio.to_thread(serving_pids, later)
            names = set(
                await asyncio.to_thread(
                    lambda: list(
                        ChatSession.objects.filter(
                            pk__in=[c.init["session_id"] for c in on_killed]
                        ).values_list("web_process", flat=True)
                    )
                )
            )
            deadline = time.monotonic() + 30
            while presence.alive(names) != set():  # the killed process's presence expires
                assert time.monotonic() < deadline, "the killed process is still announced"
                await asyncio.sleep(0.2)
            out = StringIO()
            await asyncio.to_thread(call_command, "cleanup_sessions", stdout=out)
            for client in [*on_survivor, *later]:
                await client.ws.close()
            return {
                "spread": spread,
                "killed": killed,
                "survivor": survivor,
                "later_spread": later_spread,
                "on_killed": [c.init["session_id"] for c in on_killed],
                "on_survivor": [c.init["session_id"] for c in on_survivor],
            }

        result = run(body(), timeout=240)
        assert sorted(result["spread"]) == first  # both children served, nothing else did
        assert set(result["later_spread"]) <= set(pool_children(supervisor.popen.pid)) | {
            result["survivor"]
        }
        assert result["killed"] not in result["later_spread"]
        assert "killed by SIGKILL; started" in supervisor.log_tail(5000)
        supervisor.wait_until(
            lambda: len(pool_children(supervisor.popen.pid)) == 2, what="the killed one again"
        )
        assert result["killed"] not in pool_children(supervisor.popen.pid)
        for session_id in result["on_killed"]:
            assert ChatSession.objects.get(pk=session_id).end_reason == "server_lost"
        for session_id in result["on_survivor"]:  # closed by the client, not by the cleanup
            assert ChatSession.objects.get(pk=session_id).end_reason != "server_lost"

        children = pool_children(supervisor.popen.pid)
        supervisor.signal(signal.SIGTERM)
        assert supervisor.popen.wait(40) == 0
        assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []
    finally:
        supervisor.stop()


def pids_of(clients: list[Client]) -> list[int]:
    """The pid of the web process holding each of `clients`' sessions (their records)."""
    rows = ChatSession.objects.filter(pk__in=[c.init["session_id"] for c in clients])
    by_id = {str(pk): name for pk, name in rows.values_list("pk", "web_process")}
    return [int(by_id[c.init["session_id"]].split(":")[1]) for c in clients]  # host:pid:random


def test_web_processes_end_when_their_supervisor_is_killed(log_dir: Path) -> None:
    """No orphan keeps serving the port unwatched after its supervisor died of SIGKILL."""
    port = free_port()
    env = child_env(WEB_PROCESSES="2", HOST="127.0.0.1", PORT=str(port))
    supervisor = Proc("web-orphans", [sys.executable, "-m", "echoproject.web"], env, log_dir)
    try:
        supervisor.wait_until(
            lambda: port_open(port) and len(pool_children(supervisor.popen.pid)) == 2,
            what="two web processes",
        )
        children = pool_children(supervisor.popen.pid)
        os.kill(supervisor.popen.pid, signal.SIGKILL)
        supervisor.popen.wait(10)
        deadline = time.monotonic() + 40
        while any(_running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in children if _running(pid)] == []
        assert not port_open(port)
    finally:
        supervisor.stop()


def _running(pid: int) -> bool:
    """Alive and not a zombie (the children of a killed supervisor are reaped by init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_port_taken_by_another_program_stops_the_web_processes_with_one_line_each(
    log_dir: Path,
) -> None:
    """Children that cannot listen each say why in one line; after a few tries the
    supervisor gives up with status 1 instead of starting them for ever."""
    import socket

    from echoproject import webprocs

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody else may bind the port
    taken.listen()
    port = taken.getsockname()[1]
    env = child_env(WEB_PROCESSES="2", HOST="127.0.0.1", PORT=str(port))
    supervisor = Proc("web-taken", [sys.executable, "-m", "echoproject.web"], env, log_dir)
    try:
        status = supervisor.popen.wait(120)
        log = supervisor.log_tail(20000)
    finally:
        supervisor.stop()
        taken.close()
    assert status == 1
    refusals = [line for line in log.splitlines() if "web: cannot listen on" in line]
    assert len(refusals) >= webprocs.MAX_DEATHS and "Address already in use" in refusals[0]
    assert "Traceback" not in log
    assert f"{webprocs.MAX_DEATHS} deaths in" in log and "giving up" in log
