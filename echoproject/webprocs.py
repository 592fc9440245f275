"""Several web processes on one port: a small supervisor and the children's shared socket.

One daphne process runs its event loop on one core; a machine with more cores runs one per
core. They share HOST:PORT through SO_REUSEPORT: each child binds its own listening socket to
the same address and the kernel spreads new connections over the sockets (by a hash of the
connection's addresses), so neither a port per process nor a balancer in front is needed, and
a dead child's socket simply leaves the group. A session stays in the process that accepted its
WebSocket (its WebRTC peer and tasks live there); each child announces its own presence
(chat/presence.py), so the sessions of a child that dies end at the next cleanup like those of
any dead web process, while its siblings keep theirs.

The supervisor (`python -m echoproject.web` itself when WEB_PROCESSES > 1) starts the
children, starts a dead one again (one line naming it and the cause), gives up with status 1
when they keep dying (`MAX_DEATHS` within `DEATH_WINDOW_S`: a port taken by another program, a
broken deployment), and passes SIGTERM/SIGINT on to them, waiting for their graceful shutdown.
A child ends by itself when its supervisor dies, even of SIGKILL (the kernel's parent-death
signal), so no orphan keeps serving the port unwatched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque

CHILD_ENV = "ECHO_WEB_SUPERVISOR"  # the supervisor's pid, in its children's environment
MAX_DEATHS = 5  # per child slot, within DEATH_WINDOW_S
DEATH_WINDOW_S = 60.0
STOP_TIMEOUT_S = 30.0  # a child still running this long after SIGTERM is killed
RESTART_GAP_S = 1.0  # a child is started again at least this long after its last start
BACKLOG = 1024  # pending connections per child (the kernel caps it at net.core.somaxconn)


def is_child() -> bool:
    return bool(os.environ.get(CHILD_ENV))


def _say(line: str) -> None:
    print(f"web: {line}", file=sys.stderr, flush=True)


def _cause(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def supervise(count: int, argv: list[str]) -> int:
    """Run `count` web processes until SIGTERM/SIGINT; 0 after a clean stop, 1 on giving up."""
    command = [sys.executable, "-m", "echoproject.web", *argv]
    env = {**os.environ, CHILD_ENV: str(os.getpid())}
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = [subprocess.Popen(command, env=env) for _ in range(count)]
    started = [time.monotonic()] * count
    deaths = [deque[float]() for _ in range(count)]
    _say(f"{count} processes: {' '.join(str(c.pid) for c in children)}")
    status = 0
    while not stopping:
        for slot, child in enumerate(children):
            returncode = child.poll()
            if returncode is None:
                continue
            if stopping:  # a stop signalled to every process at once (systemd, Ctrl-C)
                break
            now = time.monotonic()
            deaths[slot].append(now)
            while deaths[slot] and deaths[slot][0] < now - DEATH_WINDOW_S:
                deaths[slot].popleft()
            if len(deaths[slot]) >= MAX_DEATHS:
                _say(
                    f"process {child.pid} {_cause(returncode)}; {MAX_DEATHS} deaths in "
                    f"{DEATH_WINDOW_S:.0f} s, giving up"
                )
                stopping.append(0)
                status = 1
                break
            time.sleep(max(0.0, started[slot] + RESTART_GAP_S - now))
            children[slot], started[slot] = subprocess.Popen(command, env=env), time.monotonic()
            _say(f"process {child.pid} {_cause(returncode)}; started {children[slot].pid} instead")
        time.sleep(0.2)
    _stop(children)
    return status


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"process {child.pid} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it")
            child.kill()
            child.wait()


def end_with_supervisor() -> None:
    """In a child: SIGTERM when the supervisor dies (Linux), and exit now if it already has."""
    libc_name = ctypes.util.find_library("c")
    if libc_name and sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(libc_name, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if str(os.getppid()) != os.environ.get(CHILD_ENV):
        sys.exit(0)  # the supervisor died before the signal was armed


def shared_port_socket(host: str, port: int) -> tuple[int, socket.AddressFamily]:
    """A listening socket on host:port that siblings may bind too (SO_REUSEPORT): its file
    descriptor, now owned by the caller (twisted adopts it), and its address family."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
    return sock.detach(), family
