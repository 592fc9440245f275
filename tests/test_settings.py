"""Settings come from the environment; a bad value stops start-up with one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from echoproject import env
from tests.procs import ROOT, child_env

PRINT_SETTINGS = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'engine': s.DATABASES['default']['ENGINE'], 'name': s.DATABASES['default']['NAME'],"
    " 'storage': s.STORAGES['default']['BACKEND'], 'debug': s.DEBUG, 'hosts': s.ALLOWED_HOSTS,"
    " 'asr': s.ASR_BACKEND, 'llm': s.LLM_BACKEND, 'tts': s.TTS_BACKEND, 'renderer': s.RENDER_BACKEND,"
    " 'broker': s.CELERY_BROKER_URL, 'layer': s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0],"
    " 'timeout': s.SESSION_TIMEOUT_S}))"
)


def run_python(code: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = child_env(DJANGO_SETTINGS_MODULE="echoproject.settings", **environ)
    env.pop("DATABASE_URL")
    env.update(environ)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def computed(**environ: str) -> dict:
    result = run_python(PRINT_SETTINGS, **environ)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_embedded_defaults() -> None:
    values = computed()
    assert values["engine"] == "django.db.backends.sqlite3"
    assert values["storage"].endswith("FileSystemStorage")
    assert values["debug"] is False
    assert (values["asr"], values["llm"], values["tts"], values["renderer"]) == (
        "pocketsphinx",
        "persona",
        "espeak",
        "lite",
    )
    assert values["broker"] == values["layer"]


def test_values_from_the_environment() -> None:
    values = computed(
        DATABASE_URL="postgres://app:pw@db.internal:5433/echo",
        REDIS_URL="redis://cache.internal:6380/2",
        DEBUG="yes",
        ALLOWED_HOSTS="avatar.example, www.avatar.example",
        S3_BUCKET="echo-media",
        DASHSCOPE_API_KEY="sk-test",
        SESSION_TIMEOUT_S="120",
    )
    assert values["engine"] == "django.db.backends.postgresql"
    assert values["name"] == "echo"
    assert values["broker"] == values["layer"] == "redis://cache.internal:6380/2"
    assert values["debug"] is True
    assert values["hosts"] == ["avatar.example", "www.avatar.example"]
    assert values["storage"] == "chat.s3.PublicS3Storage"
    # a DashScope key makes the cloud providers the default
    assert (values["asr"], values["llm"], values["tts"]) == ("dashscope", "dashscope", "dashscope")
    assert values["timeout"] == 120


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"SESSION_TIMEOUT_S": "ten"}, "SESSION_TIMEOUT_S"),
        ({"SESSION_TIMEOUT_S": "0"}, "SESSION_TIMEOUT_S"),
        ({"DATABASE_URL": "mysql://root@localhost/echo"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"ASR_BACKEND": "whisper"}, "ASR_BACKEND"),
        ({"LLM_BACKEND": "dashscope"}, "DASHSCOPE_API_KEY"),
        ({"LLM_BACKEND": "openai"}, "LLM_BASE_URL"),
        ({"ICE_SERVERS": "stun:example.org"}, "ICE_SERVERS"),
        ({"TURN_URLS": "turn:turn.example:3478"}, "TURN_SECRET"),
        ({"TURN_URLS": "stun:turn.example:3478", "TURN_SECRET": "s"}, "TURN_URLS"),
        ({"TURN_TTL_S": "5"}, "TURN_TTL_S"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY_FILE"),
        ({"CHAT_REQUIRE_TOKEN": "true"}, "CHAT_TOKENS"),
        ({"MAX_AUDIO_SECONDS": "-3"}, "MAX_AUDIO_SECONDS"),
        ({"PORT": "eighty"}, "PORT"),
        ({"CELERY_VISIBILITY_TIMEOUT_S": "60"}, "CELERY_TASK_TIME_LIMIT"),
        ({"VOICE_QUEUE": ""}, "VOICE_QUEUE"),
        ({"VOICE_POLL_S": "0"}, "VOICE_POLL_S"),
        ({"VOICE_READY_TIMEOUT_S": "soon"}, "VOICE_READY_TIMEOUT_S"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"WORKER_METRICS_ADDR": "9808"}, "WORKER_METRICS_ADDR"),
        ({"WORKER_METRICS_ADDR": "0.0.0.0:99999"}, "WORKER_METRICS_ADDR"),
        ({"METRICS_DIR": "/proc/no-metrics-here"}, "METRICS_DIR"),
        ({"CHAT_ACCESS": "everyone"}, "CHAT_ACCESS"),
        ({"CHAT_ACCESS": "token"}, "CHAT_TOKENS"),
        ({"CHAT_TICKET_TTL_S": "1"}, "CHAT_TICKET_TTL_S"),
        ({"ADMIN_URL": "/"}, "ADMIN_URL"),
        ({"ADMIN_URL": "adm in/"}, "ADMIN_URL"),
        ({"FLOWER_BASIC_AUTH": "operator"}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_BASIC_AUTH": "operator:short"}, "FLOWER_BASIC_AUTH"),
        ({"LIMIT_SESSIONS": "-1"}, "LIMIT_SESSIONS"),
        ({"MEDIA_URL_EXPIRY_S": "5"}, "MEDIA_URL_EXPIRY_S"),
        ({"ASR_OFFLINE_DECODERS": "0"}, "ASR_OFFLINE_DECODERS"),
        ({"WEB_PROCESSES": "none"}, "WEB_PROCESSES"),
        ({"WEBRTC_OPUS_COMPLEXITY": "11"}, "WEBRTC_OPUS_COMPLEXITY"),
    ],
)
def test_bad_value_stops_start_up_with_one_line(environ: dict[str, str], named: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**{k: v for k, v in child_env().items() if k != "DATABASE_URL"}, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_celery_worker_refuses_bad_settings_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "celery_app", "inspect", "ping"],
        cwd=ROOT,
        env={**child_env(), "REDIS_URL": "nonsense"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: REDIS_URL must be a URL starting with redis:// or rediss:// or"
        " unix://, got 'nonsense'"
    ]


def test_secret_read_from_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "key"
    secret.write_text("s3cr3t-value\n")
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    monkeypatch.setenv("LLM_API_KEY_FILE", str(secret))
    assert env.env_str("LLM_API_KEY") == "s3cr3t-value"


def test_typed_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_LIST", " a, b ,,c ")
    monkeypatch.setenv("X_BOOL", "Off")
    monkeypatch.setenv("X_JSON", '[{"urls": "stun:x"}]')
    assert env.env_list("X_LIST") == ["a", "b", "c"]
    assert env.env_bool("X_BOOL", True) is False
    assert env.env_json("X_JSON", []) == [{"urls": "stun:x"}]
    assert env.env_int("X_UNSET", 7) == 7
