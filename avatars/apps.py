from __future__ import annotations

from django.apps import AppConfig


class AvatarsConfig(AppConfig):
    name = "avatars"
    verbose_name = "Avatar characters"

    def ready(self) -> None:
        from avatars import voices  # noqa: F401 - connects the cloned voices' signal handlers
