"""Real processes for tests and benchmarks: start, wait until ready, and always stop (with their
children); their memory and CPU time from /proc."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


_locks: dict[int, IO[str]] = {}


def claim_redis_db() -> int:
    """Lock one of Redis's databases 1–15 for this process (0 is left to the running service),
    so that test runs and benchmarks on one machine never share queues or groups. The lock
    holds until `release_redis_db` or the process's end."""
    for number in range(1, 16):
        handle = open(f"{tempfile.gettempdir()}/echoproject-test-redis-{number}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _locks[number] = handle
        return number
    raise RuntimeError("every Redis database 1-15 is in use by test runs or benchmarks")


def release_redis_db(number: int) -> None:
    """Give a claimed database back (its lock; emptying it is the claimer's business)."""
    handle = _locks.pop(number, None)
    if handle is not None:
        handle.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Whether `condition()` became true within `timeout` seconds (checked every `step`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class Proc:
    """A child process in its own process group, its output kept in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until(
        self, ready: Callable[[], bool], timeout: float = 60.0, what: str = "ready"
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.returncode}):\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not {what} after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        self.signal(signal.SIGKILL)  # children left behind in the group
        self._log.close()
        return self.popen.returncode


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a service process: the test run's settings and the test database."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DATABASE_URL", f"sqlite:///{os.environ['TEST_SQLITE_PATH']}")
    # one daphne per web process started by a test (its pid is the one serving), unless the
    # test asks for several (tests/test_web_processes.py)
    env.setdefault("WEB_PROCESSES", "1")
    env.update(extra)
    return env


def celery_worker_args(
    queues: str, nodename: str, concurrency: int, loglevel: str = "info"
) -> list[str]:
    """The command line of a Celery worker of the project on `queues`."""
    return [
        str(BIN / "celery"),
        "-A",
        "celery_app",
        "worker",
        "-Q",
        queues,
        "-n",
        nodename,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def start_celery_worker(
    log_dir: Path,
    queues: str,
    name: str,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    app_env: dict[str, str] | None = None,
) -> Proc:
    """A worker; `app_env` when it uses another broker than this process (another Redis db)."""
    from celery_app import app

    if app_env is not None:
        from celery import Celery

        # not the current app: shared tasks sent later by this process must keep using the
        # test run's own broker
        app = Celery(
            broker=app_env["REDIS_URL"], backend=app_env["REDIS_URL"], set_as_current=False
        )

    nodename = f"{name}@{socket.gethostname()}"
    proc = Proc(
        name, celery_worker_args(queues, nodename, concurrency), env or child_env(), log_dir
    )
    proc.nodename = nodename  # type: ignore[attr-defined]
    proc.wait_until(
        lambda: bool(app.control.ping(destination=[nodename], timeout=0.5)), what="answering pings"
    )
    return proc


def start_daphne(
    log_dir: Path, env: dict[str, str] | None = None, name: str = "daphne"
) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        name,
        [sys.executable, "-m", "echoproject.web"],
        {**(env or child_env()), "HOST": "127.0.0.1", "PORT": str(port)},
        log_dir,
    )
    proc.wait_until(lambda: port_open(port), what="listening")
    return proc, port


def pool_children(pid: int) -> list[int]:
    """Process ids of a Celery worker's pool processes (the children of its main process)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(set(children))


def kill_pool_child(worker: Proc | int, timeout: float = 10.0) -> int:
    """SIGKILL the only pool process of a worker (a Proc or its main pid) started with
    concurrency 1, as the kernel's out-of-memory killer would; the worker's main process lives
    on. Returns the pid killed."""
    pid = worker.popen.pid if isinstance(worker, Proc) else worker
    deadline = time.monotonic() + timeout
    while not (children := pool_children(pid)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker {pid} has no pool process")
        time.sleep(0.05)
    assert len(children) == 1, f"worker {pid} has {len(children)} pool processes"
    os.kill(children[0], signal.SIGKILL)
    return children[0]


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """CPU time (user + system) `pid` has used, in seconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nice_of(pid: int) -> int:
    return int(_stat(pid)[16])


def wait_idle(pid: int, quiet_s: float = 3.0, limit_s: float = 90.0) -> None:
    """Until `pid` used under 2 % of a core over `quiet_s` (bounded by `limit_s`): its
    sessions have ended and it has been idle a moment, as a server is between waves of users."""
    deadline = time.monotonic() + limit_s
    before = cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu_s(pid)
        if now - before < 0.02 * quiet_s:
            return
        before = now


class RedisServer:
    """A redis-server of the test's own, without persistence: a restart loses everything."""

    def __init__(self, log_dir: Path, data_dir: Path) -> None:
        self.log_dir, self.data_dir = log_dir, data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.starts = 0
        self.proc = self._start()

    def _start(self) -> Proc:
        self.starts += 1
        proc = Proc(
            f"redis-{self.port}-{self.starts}",
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
            ],
            dict(os.environ),  # redis-server needs none of the service's settings
            self.log_dir,
        )
        proc.wait_until(self.answers, timeout=20, what="answering")
        return proc

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def restart(self) -> None:
        self.proc.stop()
        self.start()

    def start(self) -> None:
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.stop()
