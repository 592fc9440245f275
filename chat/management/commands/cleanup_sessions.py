"""Ends sessions idle past SESSION_TIMEOUT_S (their files deleted) and purges old history."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat.sessions import cleanup


class Command(BaseCommand):
    help = "End idle sessions and purge history older than SESSION_RETENTION_DAYS."

    def handle(self, *args: Any, **options: Any) -> None:
        result = cleanup()
        self.stdout.write(
            f"ended {result['ended']} idle session(s), purged {result['purged']} old session(s)"
        )
