"""`manage.py check_renderer`: can the configured render backend start on this machine?"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from rendering.backends import backend_class


class Command(BaseCommand):
    help = "Report whether RENDER_BACKEND can start here; exits non-zero when it cannot."

    def handle(self, *args: Any, **options: Any) -> None:
        name = settings.RENDER_BACKEND
        try:
            problem = backend_class(name).check()
        except ImportError as exc:
            problem = f"cannot import the {name} backend: {exc}"
        if problem:
            raise CommandError(f"render backend {name}: {problem}")
        self.stdout.write(f"render backend {name}: ready ({settings.RENDER_DEVICE} device)")
