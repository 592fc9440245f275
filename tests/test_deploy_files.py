"""The role files of deploy/ that operators copy (and scripts/cluster.py fills in): every
placeholder has a value, every variable is a documented setting, and each role's Procfile runs
what the Procfile of `make run` and the systemd units run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.procs import ROOT

DEPLOY = ROOT / "deploy"
spec = importlib.util.spec_from_file_location("cluster", ROOT / "scripts" / "cluster.py")
cluster = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cluster)  # type: ignore[union-attr]

TEMPLATES = sorted(
    [*DEPLOY.glob("env/*.env"), *DEPLOY.glob("procfiles/*.Procfile")]
    + [DEPLOY / "nginx" / "echoproject.conf", DEPLOY / "coturn" / "turnserver.conf"]
)
SECRET = {
    name: "x"
    for name in (
        "SECRET_KEY",
        "DB_PASSWORD",
        "REDIS_PASSWORD",
        "TURN_SECRET",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "FLOWER_PASSWORD",
        "METRICS_TOKEN",
    )
}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_placeholder_gets_a_value(path: Path) -> None:
    text = path.read_text()
    filled = cluster.fill(text, cluster.values_for("web1", SECRET))
    assert not re.search(r"@[A-Z][A-Z0-9_]*@", filled)


def test_env_files_set_only_documented_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", readme))
    for path in DEPLOY.glob("env/*.env"):
        names = set(cluster.parse_env(path.read_text()))
        assert names, path
        assert names <= documented, (path.name, names - documented)
    # a role that shares files or sessions with the others is configured for it
    for role in ("web", "speech", "render", "data"):
        env = cluster.parse_env((DEPLOY / "env" / f"{role}.env").read_text())
        for shared in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "S3_BUCKET"):
            assert shared in env, (role, shared)
    web = cluster.parse_env((DEPLOY / "env" / "web.env").read_text())
    assert web["TURN_SECRET"] == "@TURN_SECRET@" and "TURN_URLS" in web
    turn = (DEPLOY / "coturn" / "turnserver.conf").read_text()
    assert "use-auth-secret" in turn and "static-auth-secret=@TURN_SECRET@" in turn


def test_roles_behind_the_edge_count_clients_and_keep_metrics_inside() -> None:
    web = cluster.parse_env((DEPLOY / "env" / "web.env").read_text())
    assert web["TRUST_PROXY_HEADERS"] == "true"  # the edge sets X-Forwarded-For/-Proto
    assert web["METRICS_TOKEN"] == "@METRICS_TOKEN@"
    assert "@HOST_ADDR@" in web["ALLOWED_HOSTS"].split(",")  # Prometheus scrapes by address
    for role in ("speech", "render"):
        env = cluster.parse_env((DEPLOY / "env" / f"{role}.env").read_text())
        assert env["WORKER_METRICS_ADDR"].startswith("@HOST_ADDR@:"), role
    site = (DEPLOY / "nginx" / "echoproject.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in site  # overwritten, not appended
    assert "proxy_set_header X-Forwarded-Proto https;" in site
    assert re.search(r"location = /metrics \{\s*return 404;", site)


def test_role_procfiles_run_the_commands_of_make_run() -> None:
    main = cluster.parse_procfile((ROOT / "Procfile").read_text())
    roles = {}
    for path in DEPLOY.glob("procfiles/*.Procfile"):
        roles.update(cluster.parse_procfile(path.read_text()))
    for name in ("web", "speech", "render", "beat"):
        # make run wraps each in respawn.sh; under systemd (or the cluster) the unit restarts
        wrapped = main[name].replace(f"bash scripts/respawn.sh {name} ", "")
        assert roles[name] == wrapped, name


def test_prometheus_configuration_scrapes_what_the_service_exports() -> None:
    """The scrape jobs name the paths the exporters serve, and every rule names a metric the
    service (or Flower) exports, so a renamed metric cannot leave a rule silently empty."""
    import yaml
    from django.urls import resolve

    from echoproject import metrics

    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"echoproject-web", "echoproject-workers", "flower"}
    assert resolve(jobs["echoproject-web"]["metrics_path"]).func is metrics.metrics_view
    assert all(job["static_configs"][0]["targets"] for job in jobs.values())
    [rules_file] = config["rule_files"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / rules_file).read_text())
    exported = set()
    for metric in (
        metrics.SESSIONS_OPEN,
        metrics.TURNS,
        metrics.STAGE_SECONDS,
        metrics.RENDER_RTF,
        metrics.PROVIDER_ERRORS,
        metrics.AUDIO_UNDERRUNS,
        metrics.LOOP_LAG,
        metrics.WEBRTC_CONNECTIONS,
        metrics.SESSIONS,
    ):
        exported.add(metric._name)
    series = {
        f"{name}{suffix}" for name in exported for suffix in ("", "_total", "_bucket", "_count")
    }
    recorded = {
        rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = set(re.findall(r"\b(echo[_:][a-z0-9_:]+)", rule["expr"]))
            assert names and names <= series | recorded, (rule, names - series - recorded)
    nginx = (DEPLOY / "nginx" / "echoproject.conf").read_text()
    assert "location = /metrics" in nginx  # not served to the internet
