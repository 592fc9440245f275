"""The cluster test's fixtures: a fresh `make cluster` for the run, always taken down again.

The tests here are the operator: they start the cluster (scripts/cluster.py), run the users in
`echo-client` (tests/cluster/client.py) and look at the hosts from outside (their logs, files,
the database and the bucket on echo-data), killing and restarting hosts as the scenarios say.
They are collected only with CLUSTER_TEST=1 (`make cluster-test`), as root.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, str(ROOT / "scripts" / "cluster.py")]
WORK = Path("/tmp/echoproject-cluster")
ADDRESSES = {"web1": "10.77.0.11", "web2": "10.77.0.12", "data": "10.77.0.16"}

if os.environ.get("CLUSTER_TEST") != "1":
    collect_ignore_glob = ["test_*.py"]


class ClientRun:
    """One run of tests/cluster/client.py in echo-client; phases are read as JSON lines."""

    def __init__(self, cluster: Cluster, args: list[str]) -> None:
        self.log = (WORK / f"client-{args[0]}-{time.monotonic_ns()}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                cluster.info["client_netns"],
                "env",
                f"SSL_CERT_FILE={cluster.info['ca_file']}",
                "PYTHONUNBUFFERED=1",
                sys.executable,
                "-m",
                "tests.cluster.client",
                args[0],
                cluster.info["edge_url"],
                *args[1:],
            ],  # fmt: skip
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self._buffer = b""

    def phase(self, name: str, timeout: float) -> dict[str, Any]:
        """The next report; fails on a `failed` report, another phase or the time running out."""
        deadline = time.monotonic() + timeout
        stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"client: no {name!r} report after {timeout:.0f}s")
            ready, _, _ = select.select([stdout], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(stdout.fileno(), 1 << 20)
                if not chunk:
                    pytest.fail(f"client exited ({self.proc.wait()}) before {name!r}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        report = json.loads(line)
        if report["phase"] != name:
            pytest.fail(f"client reported {report['phase']!r}, expected {name!r}: {report}")
        return report

    def go(self, word: str = "go") -> None:
        self.proc.stdin.write(word.encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()


class Cluster:
    """What the operator sees: the printed client info, hosts, the data services."""

    def __init__(self, info: dict[str, str]) -> None:
        self.info = info
        self.runs: list[ClientRun] = []

    def client(self, *args: str) -> ClientRun:
        run = ClientRun(self, list(args))
        self.runs.append(run)
        return run

    def script(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [*SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def on_data(self, code: str) -> Any:
        """Python on echo-data with the data role's environment; returns its JSON output."""
        env = {**os.environ, **_env_file(WORK / "data" / "env")}
        result = subprocess.run(
            ["ip", "netns", "exec", "echo-data", sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,  # fmt: skip
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    def manage(self, host: str, *args: str) -> str:
        """A manage.py command on a host (echo-<name>) with its role's environment."""
        env = {**os.environ, **_env_file(WORK / host.removeprefix("echo-") / "env")}
        result = subprocess.run(
            ["ip", "netns", "exec", host, sys.executable, "manage.py", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def sql(self, query: str) -> list[list[Any]]:
        return self.on_data(
            "import os, json, psycopg, urllib.parse as u; url = os.environ['DATABASE_URL'];"
            "c = psycopg.connect(url.replace('postgres://', 'postgresql://'));"
            f"print(json.dumps([list(r) for r in c.execute({query!r}).fetchall()], default=str))"
        )

    def status_from(self, host: str, url: str, headers: dict[str, str] | None = None) -> int:
        """The HTTP status `url` answers from a host (echo-<name>, trusting the cluster's CA);
        0 when nothing answers within a few seconds."""
        code = (
            "import json, ssl, sys, urllib.error, urllib.request as r\n"
            "q = r.Request(sys.argv[1], headers=json.loads(sys.argv[2]))\n"
            "try:\n"
            "    print(r.urlopen(q, timeout=5, context=ssl.create_default_context()).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n"
            "except OSError:\n    print(0)\n"
        )
        result = subprocess.run(
            ["ip", "netns", "exec", host, "env", f"SSL_CERT_FILE={self.info['ca_file']}",
             sys.executable, "-c", code, url, json.dumps(headers or {})],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return int(result.stdout)

    def secret(self, name: str) -> str:
        """One of the cluster's generated secrets (what an operator has in the role's env)."""
        return json.loads((WORK / "secret.json").read_text())[name]

    def web_hosts(self, session_ids: list[str]) -> dict[str, str]:
        """Session id → the host whose web process holds it (its recorded web_process)."""
        ids = ",".join(f"'{i}'" for i in session_ids)
        rows = self.sql(f"select id, web_process from chat_chatsession where id in ({ids})")
        return {str(sid): process.split(":")[0] for sid, process in rows}

    def s3_keys(self, prefix: str = "sessions/") -> list[str]:
        return self.on_data(
            "import os, json, boto3; e = os.environ;"
            "c = boto3.client('s3', endpoint_url=e['S3_ENDPOINT_URL'], region_name=e['S3_REGION'],"
            " aws_access_key_id=e['S3_ACCESS_KEY_ID'], aws_secret_access_key=e['S3_SECRET_ACCESS_KEY']);"
            "p = c.get_paginator('list_objects_v2');"
            f"print(json.dumps([o['Key'] for page in p.paginate(Bucket=e['S3_BUCKET'], Prefix={prefix!r})"
            " for o in page.get('Contents', [])]))"
        )

    def media_files(self) -> list[str]:
        """Every file under every host's MEDIA_ROOT."""
        return [str(p) for p in WORK.glob("*/media/**/*") if p.is_file()]

    def log(self, host: str, name: str) -> str:
        path = WORK / host / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def task(self, task_id: str) -> dict[str, Any]:
        """What Flower on echo-data, behind its login, knows of a Celery task: its state, the
        worker that holds it and the times of its events ({} while it knows nothing of it)."""
        return self.on_data(
            "import base64, json, os, urllib.error, urllib.request as r\n"
            "login = base64.b64encode(os.environ['FLOWER_BASIC_AUTH'].encode()).decode()\n"
            f"q = r.Request('http://' + os.environ['HOST'] + ':' + os.environ['FLOWER_PORT']"
            f" + '/api/task/info/{task_id}', headers={{'Authorization': 'Basic ' + login}})\n"
            "try:\n"
            "    print(r.urlopen(q, timeout=10).read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    if e.code != 404:\n        raise\n"
            "    print('{}')\n"
        )

    def _worker_host(self, task_id: str, states: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if task.get("state") in states and task.get("worker"):
                return {**task, "host": task["worker"].split("@", 1)[1]}  # render@<host name>
            time.sleep(0.3)
        raise AssertionError(f"no render worker in {sorted(states)} for {task_id}: {task}")

    def rendered_on(self, task_id: str, timeout: float = 15) -> str:
        """The GPU host whose render worker finished the task."""
        return self._worker_host(task_id, {"SUCCESS"}, timeout)["host"]

    def render_span(self, task_id: str, timeout: float = 15) -> tuple[float, float]:
        """When the worker that finished the task received it and when it finished (its clock)."""
        task = self._worker_host(task_id, {"SUCCESS"}, timeout)
        return task["received"], task["succeeded"]

    def rendering_on(self, task_id: str, timeout: float = 30) -> str:
        """The GPU host whose render worker holds the task now."""
        return self._worker_host(task_id, {"RECEIVED", "STARTED"}, timeout)["host"]

    def warm_on(self, slug: str) -> set[str]:
        """The GPU hosts whose render worker's heartbeat holds the avatar warm now."""
        ((avatar_id,),) = self.sql(f"select id from avatars_avatar where slug = '{slug}'")
        return set(
            self.on_data(
                "import json, os, redis\n"
                "r = redis.Redis.from_url(os.environ['REDIS_URL'])\n"
                "hosts = []\n"
                "for node in r.zrange('render:workers', 0, -1):\n"
                "    raw = r.get(b'render:worker:' + node)\n"
                f"    if raw and {int(avatar_id)} in json.loads(raw).get('warm_avatars', []):\n"
                "        hosts.append(node.decode().split('@', 1)[1])\n"
                "print(json.dumps(hosts))\n"
            )
        )

    def pids(self, host: str) -> set[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", f"echo-{host}"], capture_output=True, text=True, timeout=10
        ).stdout
        return {int(p) for p in out.split()}

    def main_pids(self, host: str) -> set[int]:
        """The host's started processes: those whose parent is not on the host as well."""
        pids = self.pids(host)
        roots = set()
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent not in pids:
                roots.add(pid)
        return roots

    def restart(self, host: str, *names: str, ready: str = "", port: int = 0) -> None:
        """Start a host's processes again and wait until they serve (a log line or a port)."""
        name = names[0] if names else ""
        before = self.log(host, name).count(ready) if ready else 0
        self.script("start", host, *names)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if ready and self.log(host, name).count(ready) > before:
                return
            if port and self.tcp_open(host, port):
                return
            time.sleep(0.5)
        raise AssertionError(f"echo-{host} {names} not back after 180s")

    def tcp_open(self, host: str, port: int) -> bool:
        address = ADDRESSES[host]
        probe = f"exec 3<>/dev/tcp/{address}/{port}"
        result = subprocess.run(
            ["ip", "netns", "exec", "echo-edge", "timeout", "2", "bash", "-c", probe],
            capture_output=True,
            timeout=10,  # fmt: skip
        )
        return result.returncode == 0


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the cluster test needs root (ip netns, iptables): run it as root")
    made = None
    try:
        result = subprocess.run(
            [*SCRIPT, "up"], cwd=ROOT, capture_output=True, text=True, timeout=420
        )
        assert result.returncode == 0, f"make cluster failed:\n{result.stderr[-4000:]}"
        info = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        assert set(info) >= {"edge_url", "ca_file", "client_netns", "turn"}, result.stdout
        made = Cluster(info)
        yield made
    finally:
        for run in made.runs if made else []:
            run.close()
        # every host's logs and the clients' stderr outlive the cluster, for a post-mortem
        saved = ROOT / "test-artifacts" / "cluster"
        shutil.rmtree(saved, ignore_errors=True)
        for log in [*WORK.glob("*/logs/*.log"), *WORK.glob("client-*.log")]:
            target = saved / log.relative_to(WORK)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target)
        if os.environ.get("CLUSTER_KEEP") != "1":  # keep it up for a post-mortem
            subprocess.run([*SCRIPT, "down"], cwd=ROOT, capture_output=True, timeout=180)
