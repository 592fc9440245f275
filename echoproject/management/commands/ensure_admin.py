"""Creates the admin account on first run.

The password comes from ADMIN_PASSWORD; without it one is generated and printed once, the only
time it is shown. An existing account is left as it is.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin user from ADMIN_USERNAME/ADMIN_PASSWORD if it does not exist."

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        if users.objects.filter(username=settings.ADMIN_USERNAME).exists():
            self.stdout.write(f"admin user {settings.ADMIN_USERNAME!r} exists")
            return
        password = settings.ADMIN_PASSWORD or secrets.token_urlsafe(12)
        users.objects.create_superuser(settings.ADMIN_USERNAME, settings.ADMIN_EMAIL, password)
        if settings.ADMIN_PASSWORD:
            self.stdout.write(f"created admin user {settings.ADMIN_USERNAME!r} (ADMIN_PASSWORD)")
        else:
            self.stdout.write(
                f"created admin user {settings.ADMIN_USERNAME!r} with password {password}"
                " (shown only now; set ADMIN_PASSWORD to choose one)"
            )
