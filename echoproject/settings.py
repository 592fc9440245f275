"""Settings of the whole service, every value read from the environment in this one module.

The README lists every variable. Defaults give the embedded set-up: SQLite, local Redis, files
under media/, offline providers, the `lite` renderer.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ

from echoproject.env import (
    SettingsError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_json,
    env_list,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

# --- core -------------------------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    """SECRET_KEY, or one generated once and kept in VAR_DIR (fine for a single machine)."""
    key = env_str("SECRET_KEY")
    if key:
        if len(key) < 32:
            raise SettingsError("SECRET_KEY must be at least 32 characters long")
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
LOG_LEVEL = env_choice("LOG_LEVEL", ["debug", "info", "warning", "error"], "info").upper()

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "echoproject",
    "avatars",
    "chat",
    "rendering",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "echoproject.urls"
ASGI_APPLICATION = "echoproject.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------------------
DATABASE_URL = env_url(
    "DATABASE_URL",
    f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
    ["sqlite", "postgres", "postgresql", "pgsql"],
)
_db = environ.Env.db_url_config(DATABASE_URL)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web, workers, beat) share the file: WAL and immediate transactions
    # keep writers from failing with "database is locked".
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    _db["TEST"] = {"NAME": env_str("TEST_SQLITE_PATH", str(VAR_DIR / "test.sqlite3"))}
# Connections kept open between requests and database calls (for SQLite too: opening one runs
# the pragmas above, and a realtime turn makes several calls from the web process's loop).
_db["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
_db["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis: broker, results, channel layer -----------------------------------------------------
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", ["redis", "rediss", "unix"])
# chat.layers: channels_redis's layer riding out Redis disconnects and restarts
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "chat.layers.ResilientRedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "capacity": 500, "expiry": 60},
    }
}

# --- storage ----------------------------------------------------------------------------------
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")))
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# Absolute origin under which this service is reachable from outside (e.g. https://avatar.example),
# used to turn local media paths into URLs a cloud service can fetch.
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL").rstrip("/")
SERVE_MEDIA = env_bool("SERVE_MEDIA", True)
# lifetime of the signed URLs of session files with filesystem storage (echoproject.media)
MEDIA_URL_EXPIRY_S = env_int("MEDIA_URL_EXPIRY_S", 3600, minimum=60, maximum=7 * 24 * 3600)

S3_BUCKET = env_str("S3_BUCKET")
S3_URL_EXPIRY_S = env_int("S3_URL_EXPIRY_S", 3600, minimum=60, maximum=7 * 24 * 3600)
if S3_BUCKET:
    _media_storage = {
        "BACKEND": "chat.s3.PublicS3Storage",
        "OPTIONS": {
            # URLs handed to clients name this endpoint (OSS's public one, or an edge proxy)
            "public_endpoint_url": env_str("S3_PUBLIC_ENDPOINT_URL"),
            "bucket_name": S3_BUCKET,
            "endpoint_url": env_str("S3_ENDPOINT_URL") or None,
            "region_name": env_str("S3_REGION") or None,
            "access_key": env_str("S3_ACCESS_KEY_ID") or None,
            "secret_key": env_str("S3_SECRET_ACCESS_KEY") or None,
            "location": env_str("S3_PREFIX"),
            "addressing_style": env_choice(
                "S3_ADDRESSING_STYLE", ["auto", "path", "virtual"], "auto"
            ),
            "signature_version": "s3v4",
            "querystring_auth": True,
            "querystring_expire": S3_URL_EXPIRY_S,
            "file_overwrite": True,
            "default_acl": None,
        },
    }
else:
    _media_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _media_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- sessions and protocol --------------------------------------------------------------------
SESSION_TIMEOUT_S = env_int("SESSION_TIMEOUT_S", 600, minimum=1)
HEARTBEAT_INTERVAL_S = env_int("HEARTBEAT_INTERVAL_S", 30, minimum=1)
SESSION_RETENTION_DAYS = env_int("SESSION_RETENTION_DAYS", 30, minimum=0)
# `days`: history kept SESSION_RETENTION_DAYS; `end`: a session's history goes when it ends
SESSION_RETENTION = env_choice("SESSION_RETENTION", ["days", "end"], "days")
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 10 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_UPLOAD_BYTES + 64 * 1024
MAX_AUDIO_SECONDS = env_float("MAX_AUDIO_SECONDS", 60.0, minimum=1.0)
MAX_TEXT_CHARS = 2000
RATE_LIMIT_MESSAGES = env_int("RATE_LIMIT_MESSAGES", 30, minimum=1)
RATE_LIMIT_WINDOW_S = env_float("RATE_LIMIT_WINDOW_S", 1.0, minimum=0.01)
CHAT_REQUIRE_TOKEN = env_bool("CHAT_REQUIRE_TOKEN", False)
CHAT_TOKENS = env_list("CHAT_TOKENS", [])
if CHAT_REQUIRE_TOKEN and not CHAT_TOKENS:
    raise SettingsError("CHAT_TOKENS must list at least one token when CHAT_REQUIRE_TOKEN is true")
# who gets session tickets (chat.access): anyone, Django's logged-in users, or static-token holders
CHAT_ACCESS = env_choice(
    "CHAT_ACCESS", ["anonymous", "login", "token"], "token" if CHAT_REQUIRE_TOKEN else "anonymous"
)
if CHAT_ACCESS == "token" and not CHAT_TOKENS:
    raise SettingsError("CHAT_TOKENS must list at least one token when CHAT_ACCESS is token")
CHAT_TICKET_TTL_S = env_int("CHAT_TICKET_TTL_S", 120, minimum=5, maximum=24 * 3600)
# limits that protect the provider bill, per logged-in user or client address (chat.limits);
# 0 is no limit
LIMIT_SESSIONS = env_int("LIMIT_SESSIONS", 0, minimum=0)
LIMIT_TURNS_PER_MINUTE = env_int("LIMIT_TURNS_PER_MINUTE", 0, minimum=0)
LIMIT_AUDIO_S_PER_DAY = env_int("LIMIT_AUDIO_S_PER_DAY", 0, minimum=0)
LIMIT_REPLY_CHARS_PER_DAY = env_int("LIMIT_REPLY_CHARS_PER_DAY", 0, minimum=0)
LIMIT_VIDEO_S_PER_DAY = env_int("LIMIT_VIDEO_S_PER_DAY", 0, minimum=0)
# behind a proxy that sets X-Forwarded-For (deploy/nginx): the client address comes from it
TRUST_PROXY_HEADERS = env_bool("TRUST_PROXY_HEADERS", False)
DEFAULT_AVATAR = env_str("DEFAULT_AVATAR", "aria")
ICE_SERVERS = env_json("ICE_SERVERS", [])
if not isinstance(ICE_SERVERS, list) or not all(
    isinstance(s, dict) and "urls" in s for s in ICE_SERVERS
):
    raise SettingsError('ICE_SERVERS must be a JSON list like [{"urls": "stun:host:3478"}]')
# TURN with per-session credentials (chat.ice): coturn's use-auth-secret scheme
TURN_URLS = env_list("TURN_URLS", [])
TURN_SECRET = env_str("TURN_SECRET")
TURN_TTL_S = env_int("TURN_TTL_S", 3600, minimum=60, maximum=7 * 24 * 3600)
if TURN_URLS and not TURN_SECRET:
    raise SettingsError("TURN_SECRET must be set when TURN_URLS is (coturn's static-auth-secret)")
if any(not url.startswith(("turn:", "turns:")) for url in TURN_URLS):
    raise SettingsError("TURN_URLS must be turn: or turns: URLs, e.g. turn:turn.example:3478")
WEBRTC_TIMEOUT_S = env_float("WEBRTC_TIMEOUT_S", 15.0, minimum=1.0)
WEBRTC_OPUS_COMPLEXITY = env_int("WEBRTC_OPUS_COMPLEXITY", 1, minimum=0, maximum=10)

# --- providers --------------------------------------------------------------------------------
DASHSCOPE_API_KEY = env_str("DASHSCOPE_API_KEY")
_cloud = bool(DASHSCOPE_API_KEY)
ASR_BACKEND = env_choice(
    "ASR_BACKEND", ["pocketsphinx", "dashscope"], "dashscope" if _cloud else "pocketsphinx"
)
LLM_BACKEND = env_choice(
    "LLM_BACKEND", ["persona", "dashscope", "openai"], "dashscope" if _cloud else "persona"
)
TTS_BACKEND = env_choice(
    "TTS_BACKEND", ["espeak", "dashscope"], "dashscope" if _cloud else "espeak"
)
if "dashscope" in (ASR_BACKEND, LLM_BACKEND, TTS_BACKEND) and not _cloud:
    raise SettingsError("DASHSCOPE_API_KEY must be set when a provider backend is dashscope")
DASHSCOPE_HTTP_BASE_URL = env_str("DASHSCOPE_HTTP_BASE_URL")
DASHSCOPE_WEBSOCKET_BASE_URL = env_str("DASHSCOPE_WEBSOCKET_BASE_URL")
DASHSCOPE_ASR_MODEL = env_str("DASHSCOPE_ASR_MODEL", "paraformer-realtime-v2")
DASHSCOPE_FILE_ASR_MODEL = env_str("DASHSCOPE_FILE_ASR_MODEL", "qwen3-asr-flash")
DASHSCOPE_LLM_MODEL = env_str("DASHSCOPE_LLM_MODEL", "qwen-plus")
DASHSCOPE_TTS_MODEL = env_str("DASHSCOPE_TTS_MODEL", "cosyvoice-v2")
DASHSCOPE_TTS_VOICE = env_str("DASHSCOPE_TTS_VOICE", "longxiaochun_v2")
DASHSCOPE_TTS_PRECONNECT = env_int("DASHSCOPE_TTS_PRECONNECT", 2, minimum=0, maximum=20)
LLM_BASE_URL = env_str("LLM_BASE_URL")
LLM_MODEL = env_str("LLM_MODEL")
LLM_API_KEY = env_str("LLM_API_KEY")
if LLM_BACKEND == "openai" and not (LLM_BASE_URL and LLM_MODEL):
    raise SettingsError("LLM_BASE_URL and LLM_MODEL must be set when LLM_BACKEND is openai")
LLM_MAX_HISTORY = env_int("LLM_MAX_HISTORY", 20, minimum=0)
PROVIDER_TIMEOUT_S = env_float("PROVIDER_TIMEOUT_S", 30.0, minimum=0.1)
PROVIDER_CONNECT_TIMEOUT_S = env_float("PROVIDER_CONNECT_TIMEOUT_S", 5.0, minimum=0.1)
# cloned voices (avatars.tasks): enrolment and deletion run as Celery tasks on this queue
VOICE_QUEUE = env_str("VOICE_QUEUE", "speech")
if not VOICE_QUEUE:
    raise SettingsError("VOICE_QUEUE must name a Celery queue, e.g. speech")
VOICE_POLL_S = env_float("VOICE_POLL_S", 5.0, minimum=0.1)
VOICE_READY_TIMEOUT_S = env_float("VOICE_READY_TIMEOUT_S", 600.0, minimum=1.0)
# pocketsphinx decoders one process holds at once (~47 MB each); more utterances wait for one
ASR_OFFLINE_DECODERS = env_int("ASR_OFFLINE_DECODERS", 4, minimum=1, maximum=64)

# --- rendering --------------------------------------------------------------------------------
RENDER_BACKEND = env_choice("RENDER_BACKEND", ["lite", "echomimic"], "lite")
RENDER_DEVICE = env_choice("RENDER_DEVICE", ["auto", "cpu", "cuda"], "auto")
RENDER_FPS = 25
RENDER_MAX_SIZE = env_int("RENDER_MAX_SIZE", 512, minimum=64, maximum=2048)
RENDER_SEGMENT_S = env_float("RENDER_SEGMENT_S", 2.0, minimum=0.5)
RENDER_MAX_BACKLOG = env_int("RENDER_MAX_BACKLOG", 8, minimum=1)
# render workers prepare avatars (face mesh, idle loop) when they are saved and at start
RENDER_PREPARE_AVATARS = env_bool("RENDER_PREPARE_AVATARS", True)
RENDER_HEARTBEAT_S = env_float("RENDER_HEARTBEAT_S", 2.0, minimum=0.1)
ECHOMIMIC_DIR = env_str("ECHOMIMIC_DIR")
ECHOMIMIC_WEIGHTS_DIR = env_str("ECHOMIMIC_WEIGHTS_DIR")

# --- celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_DEFAULT_QUEUE = "speech"
CELERY_TASK_ROUTES = {
    "chat.tasks.*": {"queue": "speech"},
    "rendering.tasks.*": {"queue": "render"},
    "avatars.tasks.*": {"queue": VOICE_QUEUE},
}
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 120, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 180, minimum=1)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# publishing a task rides out a Redis restart or short pause (about 8 s) before it fails
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 10,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 1.0,
}
# A turn's task whose pool process died is requeued (acks_late, reject_on_worker_lost);
# after this many deliveries that all lost their worker it fails with its stage's error code.
CELERY_TASK_MAX_DELIVERIES = env_int("CELERY_TASK_MAX_DELIVERIES", 3, minimum=1, maximum=20)
# How long the worker waits for the result of a job whose pool process died before it calls the
# worker lost and requeues the job (Celery's default: 10 s); the steps are safe to run twice.
CELERY_WORKER_LOST_WAIT = 1.0
# A task whose whole worker (main process too) died unacknowledged is redelivered after this.
CELERY_VISIBILITY_TIMEOUT_S = env_int("CELERY_VISIBILITY_TIMEOUT_S", 900, minimum=1)
if CELERY_VISIBILITY_TIMEOUT_S <= CELERY_TASK_TIME_LIMIT:
    # a task still running on a live worker would be handed to a second one, and its later
    # deliveries counted as lost workers until it fails with its stage's error code
    raise SettingsError(
        f"CELERY_VISIBILITY_TIMEOUT_S ({CELERY_VISIBILITY_TIMEOUT_S}) must be longer than "
        f"CELERY_TASK_TIME_LIMIT ({CELERY_TASK_TIME_LIMIT})"
    )
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT_S}
CLEANUP_INTERVAL_S = env_int("CLEANUP_INTERVAL_S", 60, minimum=1)
# a web process that has not renewed its presence for this long is dead (chat.presence)
WEB_PRESENCE_TTL_S = env_float("WEB_PRESENCE_TTL_S", 30.0, minimum=1.0)
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "cleanup-sessions": {"task": "chat.tasks.cleanup_sessions", "schedule": CLEANUP_INTERVAL_S},
    "sweep-voices": {"task": "avatars.tasks.sweep_voices", "schedule": 300.0},
}

# --- web process, workers' priority, health (echoproject/web.py, workers.py, health.py) -----
WEB_HOST = env_str("HOST", "127.0.0.1")  # where `python -m echoproject.web` listens
WEB_PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
# daphne processes `python -m echoproject.web` runs on WEB_PORT (SO_REUSEPORT): one per core
_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
WEB_PROCESSES = env_int("WEB_PROCESSES", _cores or 1, minimum=1, maximum=256)
WEB_GC = env_choice("WEB_GC", ["tuned", "default", "off"], "tuned")
HEALTHZ_TOKEN = env_str("HEALTHZ_TOKEN")
# Flower (echoproject/flower.py): where it listens and its login, required beyond loopback
FLOWER_HOST = WEB_HOST
FLOWER_PORT = env_int("FLOWER_PORT", 5555, minimum=1, maximum=65535)
FLOWER_BASIC_AUTH = env_str("FLOWER_BASIC_AUTH")
FLOWER_AUTH = env_str("FLOWER_AUTH")  # OAuth: a regular expression of the e-mails let in
if FLOWER_BASIC_AUTH and not all(
    ":" in pair and pair.split(":", 1)[0] and len(pair.split(":", 1)[1]) >= 8
    for pair in FLOWER_BASIC_AUTH.split(",")
):
    raise SettingsError(
        "FLOWER_BASIC_AUTH must be user:password pairs, comma-separated, passwords of 8 or more"
    )
WORKER_NICE = env_int("WORKER_NICE", 10, minimum=0, maximum=19)

# --- admin and auth ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- operators: logs and metrics (echoproject.logs, echoproject.metrics) ----------------------
LOG_FORMAT = env_choice("LOG_FORMAT", ["text", "json"], "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"turn": {"()": "echoproject.logs.TurnContextFilter"}},
    "formatters": {
        "text": {"()": "echoproject.logs.TextFormatter"},
        "json": {"()": "echoproject.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["turn"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"daphne": {"level": "WARNING"}},
}

# where the admin lives (a path prefix like "admin/" or "ops-7f3k/"), and the login of users
ADMIN_URL = env_str("ADMIN_URL", "admin/").strip("/") + "/"
if ADMIN_URL == "/" or not all(c.isalnum() or c in "-_/." for c in ADMIN_URL):
    raise SettingsError(
        f"ADMIN_URL must be a path prefix like admin/ or ops-7f3k/, got {ADMIN_URL!r}"
    )
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

ADMIN_USERNAME = env_str("ADMIN_USERNAME", "admin")
ADMIN_PASSWORD = env_str("ADMIN_PASSWORD")
ADMIN_EMAIL = env_str("ADMIN_EMAIL", "admin@localhost")

# Every process of the service on a machine (web processes, the workers' pool processes) keeps
# its metrics in files under METRICS_DIR (prometheus_client's multiprocess mode); a web
# process's /metrics and a worker's WORKER_METRICS_ADDR serve the sum over the machine.
METRICS_DIR = Path(env_str("METRICS_DIR", str(VAR_DIR / "metrics")))
try:
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    raise SettingsError(
        f"METRICS_DIR: cannot create {str(METRICS_DIR)!r} ({exc.strerror})"
    ) from None
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)
METRICS_TOKEN = env_str("METRICS_TOKEN")
WORKER_METRICS_ADDR = env_str("WORKER_METRICS_ADDR")
if WORKER_METRICS_ADDR:
    _host, _, _port = WORKER_METRICS_ADDR.rpartition(":")
    if not _host or not _port.isdigit() or not 0 < int(_port) < 65536:
        raise SettingsError("WORKER_METRICS_ADDR must be host:port, e.g. 0.0.0.0:9808")
