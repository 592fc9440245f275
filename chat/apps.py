from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat sessions"

    def ready(self) -> None:
        import celery_app  # noqa: F401 - makes the project's Celery app current in every process
        from chat import signals  # noqa: F401 - connects the Celery signal handlers
