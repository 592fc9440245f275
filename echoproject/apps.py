"""The project's own app: connects what every process of the service needs."""

from __future__ import annotations

from django.apps import AppConfig


class EchoprojectConfig(AppConfig):
    name = "echoproject"
    verbose_name = "echoproject"

    def ready(self) -> None:
        # Celery workers publish their presence for /healthz (connects `worker_ready`) and
        # yield the CPU to web processes (`worker_init`)
        from echoproject import health, workers  # noqa: F401
