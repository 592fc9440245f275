#!/usr/bin/env python3
"""A simulated multi-host deployment on this one machine: network namespaces as hosts.

`up` builds the hosts (one namespace per role on a private bridge, a NAT router in front of a
client namespace), fills the role files of deploy/ with the simulated addresses, starts every
role's processes in its own host and prints what a client needs. `down` stops every process in
those namespaces and removes every namespace, link and file it made; it is safe to run at any
time, also after a half-failed `up`. Must run as root (`ip netns`, iptables).

Each host gets its own UTS namespace too, so its processes see its own host name (Celery's
`%h`), its own VAR_DIR and MEDIA_ROOT under the work dir, and reaches the others only by
address. The bridge lives in a namespace of its own, so nothing is added to the machine's own
network.

    python scripts/cluster.py up | down | status | kill HOST | start HOST [PROCESS…]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"
WORK = Path("/tmp/echoproject-cluster")
PUBLIC_NAME = "avatar.echo.test"
NET = "10.77.0"  # the private bridge: every host of ours
CLIENT_NET = "10.78.0"  # behind the NAT router: the client only
HOSTS = {"edge": 10, "web1": 11, "web2": 12, "speech": 13, "gpu1": 14, "gpu2": 15, "data": 16}
ROUTER_OCTET = 1
ROLE = {
    "edge": "edge",
    "web1": "web",
    "web2": "web",
    "speech": "speech",
    "gpu1": "render",
    "gpu2": "render",
    "data": "data",
}
SWITCH, ROUTER, CLIENT = "echo-switch", "echo-nat", "echo-client"
NAMESPACES = [f"echo-{h}" for h in HOSTS] + [ROUTER, CLIENT, SWITCH]
S3_BUCKET = "echo-media"
DATA_SERVICES = ("redis", "postgres", "s3")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TOOLS = ("ip", "nginx", "turnserver", "iptables", "openssl", "redis-server", "unshare", "runuser")


def addr(host: str) -> str:
    return f"{NET}.{HOSTS[host]}"


def ns(host: str) -> str:
    return host if host.startswith("echo-") else f"echo-{host}"


def sh(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, text=True, capture_output=True)
    if check and result.returncode != 0:
        raise SystemExit(f"cluster: {' '.join(args)} failed: {result.stderr.strip()}")
    if not quiet and result.returncode != 0:
        print(f"cluster: {' '.join(args)}: {result.stderr.strip()}", file=sys.stderr)
    return result


def in_ns(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", namespace, *args, check=check)


def existing_namespaces() -> set[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# --- network --------------------------------------------------------------------------------
def build_network() -> None:
    """The switch namespace holds the bridge; each host gets a veth into it (eth0 inside)."""
    for name in NAMESPACES:
        sh("ip", "netns", "add", name)
        in_ns(name, "ip", "link", "set", "lo", "up")
    in_ns(SWITCH, "ip", "link", "add", "br0", "type", "bridge")
    in_ns(SWITCH, "ip", "link", "set", "br0", "up")
    plugged = {f"echo-{h}": f"{addr(h)}/24" for h in HOSTS}
    plugged[ROUTER] = f"{NET}.{ROUTER_OCTET}/24"
    for index, (name, cidr) in enumerate(plugged.items()):
        outside, inside = f"ecs{index}", f"ech{index}"  # short-lived names in the root netns
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", outside, "netns", SWITCH)
        sh("ip", "link", "set", inside, "netns", name)
        in_ns(SWITCH, "ip", "link", "set", outside, "master", "br0", "up")
        in_ns(name, "ip", "link", "set", inside, "name", "eth0")
        in_ns(name, "ip", "addr", "add", cidr, "dev", "eth0")
        in_ns(name, "ip", "link", "set", "eth0", "up")
    # the client's own link to its NAT router
    sh("ip", "link", "add", "ecc0", "type", "veth", "peer", "name", "ecc1")
    sh("ip", "link", "set", "ecc0", "netns", ROUTER)
    sh("ip", "link", "set", "ecc1", "netns", CLIENT)
    in_ns(ROUTER, "ip", "link", "set", "ecc0", "name", "eth1")
    in_ns(ROUTER, "ip", "addr", "add", f"{CLIENT_NET}.1/24", "dev", "eth1")
    in_ns(ROUTER, "ip", "link", "set", "eth1", "up")
    in_ns(CLIENT, "ip", "link", "set", "ecc1", "name", "eth0")
    in_ns(CLIENT, "ip", "addr", "add", f"{CLIENT_NET}.2/24", "dev", "eth0")
    in_ns(CLIENT, "ip", "link", "set", "eth0", "up")
    in_ns(CLIENT, "ip", "route", "add", "default", "via", f"{CLIENT_NET}.1")
    # The router masquerades the client and lets it reach the edge only (HTTPS and TURN), as a
    # user at home reaches only the public address: every media path must go through TURN.
    in_ns(ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    ipt = ("ip", "netns", "exec", ROUTER, "iptables")
    sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE")
    sh(*ipt, "-P", "FORWARD", "DROP")
    sh(*ipt, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
    sh(*ipt, "-A", "FORWARD", "-i", "eth1", "-o", "eth0", "-d", addr("edge"), "-j", "ACCEPT")
    # every namespace resolves the public name and the host names (`ip netns exec` mounts these)
    hosts = ["127.0.0.1 localhost", f"{addr('edge')} {PUBLIC_NAME}"]
    hosts += [f"{addr(h)} echo-{h}" for h in HOSTS]
    for name in NAMESPACES:
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("\n".join(hosts) + "\n")


# --- files ----------------------------------------------------------------------------------
def make_tls(pki: Path) -> tuple[Path, Path, Path]:
    """A CA of the cluster's own and a certificate for the public name signed by it."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        pki / n for n in ("ca.key", "ca.pem", "edge.key", "edge.csr", "edge.pem")
    )
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
       "-out", str(ca), "-days", "7", "-subj", "/CN=echoproject cluster CA")  # fmt: skip
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
       "-subj", f"/CN={PUBLIC_NAME}")  # fmt: skip
    ext = pki / "edge.ext"
    ext.write_text(
        f"subjectAltName=DNS:{PUBLIC_NAME}\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
       "-CAcreateserial", "-out", str(cert), "-days", "7", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


def fill(template: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise SystemExit(f"cluster: no value for @{name}@ in a deploy/ file")
        return values[name]

    return re.sub(r"@([A-Z][A-Z0-9_]*)@", one, template)


def parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            env[name.strip()] = value.strip()
    return env


def parse_procfile(text: str) -> dict[str, str]:
    procs = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            name, command = line.split(":", 1)
            procs[name.strip()] = command.strip()
    return procs


def values_for(host: str, secret: dict[str, str]) -> dict[str, str]:
    home = WORK / host
    return {
        **secret,
        "PUBLIC_NAME": PUBLIC_NAME,
        "DATA_ADDR": addr("data"),
        "HOST_ADDR": addr(host),
        "VAR_DIR": str(home / "var"),
        "MEDIA_ROOT": str(home / "media"),
        "LOG_DIR": str(home / "logs"),
        "S3_BUCKET": S3_BUCKET,
        "S3_INTERNAL_ENDPOINT": f"http://{addr('data')}:9000",
        "S3_REGION": "us-east-1",
        "RENDER_DEVICE": "cpu",
        "WEB1_ADDR": addr("web1"),
        "WEB2_ADDR": addr("web2"),
        "EDGE_LISTEN": addr("edge"),
        "TURN_LISTEN": addr("edge"),
        "TURN_RELAY": addr("edge"),
        "TURN_PEERS": f"{addr('web1')}-{addr('web2')}",
        "TLS_CERT": str(WORK / "pki" / "edge.pem"),
        "TLS_KEY": str(WORK / "pki" / "edge.key"),
        "STATIC_ROOT": str(home / "var" / "static"),
    }


# Settings only this simulation needs: a CPU renderer kept small on a 2-core machine, threads
# kept to one per process, and the cleanup quick enough for the cluster test to watch.
CLUSTER_OVERRIDES = {
    "RENDER_MAX_SIZE": "128",
    "OMP_NUM_THREADS": "1",
    "CLEANUP_INTERVAL_S": "5",
    "WEB_PRESENCE_TTL_S": "6",
    "RENDER_HEARTBEAT_S": "1",
    "CELERY_TASK_SOFT_TIME_LIMIT": "60",
    "CELERY_TASK_TIME_LIMIT": "90",
    "CELERY_VISIBILITY_TIMEOUT_S": "120",
    "TURN_TTL_S": "600",
    # the limits on, as in public, wide enough for the test's users, who all come from the one
    # address of their NAT router (the test checks they count there, not at the edge's address)
    "LIMIT_SESSIONS": "100",
    "LIMIT_TURNS_PER_MINUTE": "600",
}


def web_processes() -> str:
    """Daphne processes per web host: one by default, since both web hosts and every worker
    share this machine's cores (a 2-core CI box); CLUSTER_WEB_PROCESSES=2 runs two per host on
    one port, as a web machine with cores to spare does by default."""
    value = os.environ.get("CLUSTER_WEB_PROCESSES", "1")
    if not value.isdigit() or not 1 <= int(value) <= 16:
        raise SystemExit(f"cluster: CLUSTER_WEB_PROCESSES must be 1 to 16, got {value!r}")
    return value


def host_env(host: str, secret: dict[str, str]) -> dict[str, str]:
    """The process environment of a host: only its role's env file (filled in), as on a
    machine of its own, plus the cluster's overrides; written to <host>/env for operators."""
    role = ROLE[host]
    home = WORK / host
    values = values_for(host, secret)
    env_file = DEPLOY / "env" / f"{role}.env"
    env = parse_env(fill(env_file.read_text(), values)) if env_file.exists() else {}
    env.update({k: v for k, v in CLUSTER_OVERRIDES.items() if role != "edge"})
    if role == "web":
        env["WEB_PROCESSES"] = web_processes()
    (home / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "VAR_DIR": values["VAR_DIR"],
        "MEDIA_ROOT": values["MEDIA_ROOT"],
        **env,
    }


def load_secret() -> dict[str, str]:
    return json.loads((WORK / "secret.json").read_text())


def make_secret() -> dict[str, str]:
    secret = {
        "SECRET_KEY": secrets.token_urlsafe(40),
        "DB_PASSWORD": secrets.token_hex(12),
        "REDIS_PASSWORD": secrets.token_hex(12),
        "TURN_SECRET": secrets.token_hex(16),
        "S3_ACCESS_KEY_ID": "echo" + secrets.token_hex(6),
        "S3_SECRET_ACCESS_KEY": secrets.token_hex(16),
        "FLOWER_PASSWORD": secrets.token_hex(12),
        "METRICS_TOKEN": secrets.token_urlsafe(24),
    }
    path = WORK / "secret.json"
    path.write_text(json.dumps(secret))
    path.chmod(0o600)
    return secret


# --- processes ------------------------------------------------------------------------------
def start(host: str, names: list[str] | None = None) -> None:
    """Start the named processes (default: all) of the host's role Procfile, in its host."""
    secret = load_secret()
    role = ROLE[host]
    values = values_for(host, secret)
    procs = parse_procfile(fill((DEPLOY / "procfiles" / f"{role}.Procfile").read_text(), values))
    env = host_env(host, secret)
    logs = WORK / host / "logs"
    for name in names or list(procs):
        log = (logs / f"{name}.log").open("ab")
        subprocess.Popen(
            # own UTS namespace: the host's processes see its host name (Celery's %h)
            [
                "ip",
                "netns",
                "exec",
                ns(host),
                "unshare",
                "--uts",
                "--",
                "sh",
                "-c",
                'hostname "$0" && exec sh -c "$1"',
                ns(host),
                procs[name],
            ],  # fmt: skip
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()


def manage(host: str, *args: str) -> None:
    """A manage.py command on a host with its role's settings."""
    env = host_env(host, load_secret())
    result = subprocess.run(
        ["ip", "netns", "exec", ns(host), str(VENV_BIN / "python"), "manage.py", *args],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,  # fmt: skip
    )
    if result.returncode != 0:
        raise SystemExit(
            f"cluster: manage.py {' '.join(args)} on {host} failed:\n{result.stderr[-3000:]}"
        )


def tcp_open(namespace: str, host: str, port: int) -> bool:
    probe = f"exec 3<>/dev/tcp/{host}/{port}"
    args = ("ip", "netns", "exec", namespace, "timeout", "2", "bash", "-c", probe)
    return sh(*args, check=False, quiet=True).returncode == 0


def wait_for(what: str, ready: object, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise SystemExit(f"cluster: {what} not ready after {timeout:.0f}s (logs under {WORK})")


def log_has(host: str, name: str, text: str) -> bool:
    path = WORK / host / "logs" / f"{name}.log"
    return path.exists() and text in path.read_text(errors="replace")


def kill(host: str, sig: int = signal.SIGKILL) -> int:
    """Send `sig` to every process of a host (namespace); returns how many."""
    pids = [int(p) for p in sh("ip", "netns", "pids", ns(host), check=False).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return len(pids)


def stop_host(namespace: str, grace: float = 10.0) -> None:
    if not kill(namespace, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while (
        time.monotonic() < deadline
        and sh("ip", "netns", "pids", namespace, check=False).stdout.strip()
    ):
        time.sleep(0.2)
    kill(namespace, signal.SIGKILL)
    for _ in range(50):
        if not sh("ip", "netns", "pids", namespace, check=False).stdout.strip():
            break
        time.sleep(0.1)


# --- commands -------------------------------------------------------------------------------
def up() -> None:
    if os.geteuid() != 0:
        raise SystemExit("cluster: must run as root (ip netns, iptables)")
    missing = [t for t in TOOLS if shutil.which(t) is None] + [
        str(p) for p in (PG_BIN / "initdb", VENV_BIN / "moto_server") if not p.exists()
    ]
    if missing:
        raise SystemExit(
            f"cluster: missing {', '.join(missing)}: run `WITH_CLUSTER=1 bash scripts/setup.sh`"
        )
    web_processes()  # a bad value stops here, before anything is built
    down(quiet=True)
    for host in HOSTS:
        for sub in ("var", "media", "logs"):
            (WORK / host / sub).mkdir(parents=True, exist_ok=True)
    WORK.chmod(0o755)
    secret = make_secret()
    build_network()
    make_tls(WORK / "pki")

    # echo-data: Redis, PostgreSQL, the object store
    pg = WORK / "data" / "var" / "pg"
    pw = WORK / "data" / "var" / "pgpass"
    pw.write_text(secret["DB_PASSWORD"] + "\n")
    shutil.chown(WORK / "data" / "var", "postgres")
    shutil.chown(pw, "postgres")
    sh("runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(pg), "-U", "echo",
       f"--pwfile={pw}", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")  # fmt: skip
    with (pg / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all echo {NET}.0/24 scram-sha-256\n")
    start("data", list(DATA_SERVICES))
    wait_for("redis on echo-data", lambda: tcp_open("echo-data", addr("data"), 6379))
    wait_for("postgres on echo-data", lambda: tcp_open("echo-data", addr("data"), 5432))
    wait_for("s3 on echo-data", lambda: tcp_open("echo-data", addr("data"), 9000))
    env = host_env("data", secret)
    in_env = {**env, "PGPASSWORD": secret["DB_PASSWORD"]}
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            "echo-data",
            str(PG_BIN / "createdb"),
            "-h",
            addr("data"),
            "-U",
            "echo",
            "echo",
        ],
        env=in_env,
        check=True,
        capture_output=True,  # fmt: skip
    )
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            "echo-data",
            str(VENV_BIN / "python"),
            "-c",
            "import boto3,os; boto3.client('s3', endpoint_url=os.environ['S3_ENDPOINT_URL'],"
            " region_name=os.environ['S3_REGION'], aws_access_key_id=os.environ['S3_ACCESS_KEY_ID'],"
            " aws_secret_access_key=os.environ['S3_SECRET_ACCESS_KEY'])"
            ".create_bucket(Bucket=os.environ['S3_BUCKET'])",
        ],
        env=env,
        check=True,
        capture_output=True,  # fmt: skip
    )
    manage("data", "migrate", "--noinput", "-v0")
    manage("data", "load_avatars")
    manage("data", "ensure_admin")
    start("data", ["beat", "flower"])

    # echo-edge: static files, nginx and coturn from deploy/'s files
    manage("edge", "collectstatic", "--noinput", "-v0")
    edge_values = values_for("edge", secret)
    site = fill((DEPLOY / "nginx" / "echoproject.conf").read_text(), edge_values)
    var = WORK / "edge" / "var"
    (var / "echoproject.conf").write_text(site)
    (var / "nginx.conf").write_text(
        "# the simulated edge's nginx: Debian's defaults plus the deploy/nginx site\n"
        "worker_processes 1;\n"
        f"pid {var}/nginx.pid;\n"
        f"error_log {WORK}/edge/logs/nginx-error.log;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  include /etc/nginx/mime.types;\n  sendfile on;\n"
        f"  access_log {WORK}/edge/logs/nginx-access.log;\n"
        + "".join(
            f"  {kind}_temp_path {var}/nginx-{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {var}/echoproject.conf;\n}}\n"
    )
    turn = fill((DEPLOY / "coturn" / "turnserver.conf").read_text(), edge_values)
    (var / "turnserver.conf").write_text(turn)
    (var / "turnserver.conf").chmod(0o600)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (var / f"nginx-{kind}").mkdir(exist_ok=True)
        shutil.chown(var / f"nginx-{kind}", "www-data")
    for path in [WORK / "edge", var, var / "static"]:
        path.chmod(0o755)
    start("edge")

    for host in ("web1", "web2", "speech", "gpu1", "gpu2"):
        start(host)
    for host in ("web1", "web2"):
        wait_for(f"web on echo-{host}", lambda h=host: tcp_open(f"echo-{h}", addr(h), 8000))
    wait_for("nginx on echo-edge", lambda: tcp_open(CLIENT, addr("edge"), 443))
    wait_for("coturn on echo-edge", lambda: tcp_open("echo-edge", addr("edge"), 3478))
    for host, name in (("speech", "speech"), ("gpu1", "render"), ("gpu2", "render")):
        wait_for(
            f"{name} worker on echo-{host}", lambda h=host, n=name: log_has(h, n, " ready."), 180
        )

    info = {
        "edge_url": f"https://{PUBLIC_NAME}/",
        "ca_file": str(WORK / "pki" / "ca.pem"),
        "client_netns": CLIENT,
        "turn": f"turn:{PUBLIC_NAME}:3478",
    }
    (WORK / "cluster.json").write_text(json.dumps({**info, "work_dir": str(WORK)}))
    for key, value in info.items():
        print(f"{key}={value}")


def down(quiet: bool = False) -> None:
    """Stop every process in our namespaces, remove them, their /etc/netns files and the work
    dir. Idempotent: whatever is already gone is skipped."""
    present = existing_namespaces()
    for name in NAMESPACES:
        if name in present:
            stop_host(name)
    for name in NAMESPACES:
        if name in present:
            sh("ip", "netns", "del", name, check=False, quiet=quiet)
        shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
    # veth ends that a half-failed build left in the root namespace
    links = sh("ip", "-o", "link", "show", check=False).stdout
    for match in re.finditer(r"^\d+: (ec[sch]\d+)[@:]", links, re.MULTILINE):
        sh("ip", "link", "del", match.group(1), check=False, quiet=True)
    with contextlib.suppress(OSError):  # /etc/netns itself, when we were its only users
        Path("/etc/netns").rmdir()
    shutil.rmtree(WORK, ignore_errors=True)
    if not quiet:
        print("cluster: down")


def status() -> None:
    present = existing_namespaces()
    for name in NAMESPACES:
        pids = (
            sh("ip", "netns", "pids", name, check=False).stdout.split() if name in present else []
        )
        print(f"{name}: {'up' if name in present else 'absent'}, {len(pids)} processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    sub.add_parser("status")
    k = sub.add_parser("kill", help="SIGKILL every process of a host")
    k.add_argument("host", choices=list(HOSTS))
    s = sub.add_parser("start", help="start a host's processes (all, or those named)")
    s.add_argument("host", choices=list(HOSTS))
    s.add_argument("names", nargs="*")
    args = parser.parse_args()
    if args.command == "up":
        try:
            up()
        except BaseException:
            print(
                f"cluster: start failed; logs are under {WORK}; run `make cluster-down`",
                file=sys.stderr,
            )
            raise
    elif args.command == "down":
        down()
    elif args.command == "status":
        status()
    elif args.command == "kill":
        print(f"cluster: killed {kill(args.host)} processes on echo-{args.host}")
    elif args.command == "start":
        start(args.host, args.names or None)


if __name__ == "__main__":
    main()
