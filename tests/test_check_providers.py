"""`manage.py check_providers`: a line per backend, non-zero exit status when one fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.fakes.dashscope_server import DashScopeServer, Fault

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db  # the command also reads the avatars (their cloned voices)


def _lines(out: StringIO) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.getvalue().splitlines() if line}


@pytest.mark.usefixtures("offline_providers")
def test_offline_backends_all_pass() -> None:
    out = StringIO()
    call_command("check_providers", stdout=out)
    lines = _lines(out)
    assert lines["asr"][1:3] == ["pocketsphinx", "ok"]
    assert lines["llm"][1:3] == ["persona", "ok"]
    assert lines["tts"][1:3] == ["espeak", "ok"]
    assert all(line[4] == "ms" and float(line[3]) >= 0 for line in lines.values())


def test_a_failing_backend_is_named_and_fails_the_command(dashscope: DashScopeServer) -> None:
    dashscope.behaviour.llm_fault = Fault("http", 503, "ServiceUnavailable", "down for a bit")
    out = StringIO()
    with pytest.raises(CommandError, match="llm"):
        call_command("check_providers", stdout=out)
    lines = _lines(out)
    assert lines["asr"][1:3] == ["dashscope", "ok"]
    assert lines["tts"][1:3] == ["dashscope", "ok"]
    assert lines["llm"][1:3] == ["dashscope", "failed"]
    assert "ERR_LLM_FAILED" in out.getvalue() and "down for a bit" in out.getvalue()


def test_stage_option_checks_only_that_stage(dashscope: DashScopeServer) -> None:
    out = StringIO()
    call_command("check_providers", "--stage", "tts", stdout=out)
    assert list(_lines(out)) == ["tts"]
    # Only a TTS task ran (sockets opened ahead for later sentences are closed with the check).
    assert [item.service for item in dashscope.received if item.service != "ws"] == ["tts"]
    deadline = time.monotonic() + 5
    while dashscope.idle_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dashscope.idle_connections == 0


def _manage(server: DashScopeServer, key: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DASHSCOPE_API_KEY": key,
        "DASHSCOPE_HTTP_BASE_URL": server.http_base_url,
        "DASHSCOPE_WEBSOCKET_BASE_URL": server.websocket_url,
        "PROVIDER_TIMEOUT_S": "5",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check_providers", "--stage", "llm", "--stage", "tts"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_process_uses_the_key_from_the_environment(
    dashscope_server: DashScopeServer,
) -> None:
    dashscope_server.reset()
    done = _manage(dashscope_server, dashscope_server.api_key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "llm  dashscope     ok" in done.stdout
    assert {item.authorization for item in dashscope_server.received} == {
        f"Bearer {dashscope_server.api_key}"
    }


def test_command_process_with_a_wrong_key_fails_without_printing_it(
    dashscope_server: DashScopeServer,
) -> None:
    dashscope_server.reset()
    wrong = "sk-wrong-check-key-0123456789"
    done = _manage(dashscope_server, wrong)
    assert done.returncode != 0
    assert "failed" in done.stdout
    assert wrong not in done.stdout + done.stderr
