"""Ends sessions idle past SESSION_TIMEOUT_S or whose web process died (their files deleted)
and purges old history."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat.sessions import cleanup


class Command(BaseCommand):
    help = (
        "End idle sessions and those of dead web processes; purge history older than"
        " SESSION_RETENTION_DAYS."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        result = cleanup()
        self.stdout.write(
            f"ended {result['ended']} idle session(s) and {result['orphaned']} of dead web"
            f" processes, purged {result['purged']} old session(s)"
        )
