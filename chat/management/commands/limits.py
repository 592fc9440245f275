"""What the bill limits have counted so far (chat.limits), per user or client address, and a
way to let one of them go on before the window ends."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chat import limits


class Command(BaseCommand):
    help = (
        "List the current counters of the limits (open sessions, turns this minute, audio,"
        " reply characters and video today) per subject (user:<id> or ip:<address>)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subject", help="only this subject, e.g. ip:203.0.113.7 or user:12")
        parser.add_argument("--reset", metavar="SUBJECT", help="forget every counter of SUBJECT")
        parser.add_argument("--json", action="store_true", help="one JSON list instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["reset"]:
            deleted = limits.reset(options["reset"])
            self.stdout.write(f"reset {options['reset']}: {deleted} counter(s) deleted")
            return
        rows = limits.usage(options["subject"])
        if options["json"]:
            self.stdout.write(json.dumps(rows))
            return
        if not rows:
            self.stdout.write("no counters")
            return
        self.stdout.write(f"{'subject':<40} {'limit':<20} {'used':>10} {'allowed':>10} resets in")
        for row in rows:
            allowed = row["allowed"] or "-"
            resets = f"{row['resets_in_s']} s" if row["resets_in_s"] else "-"
            self.stdout.write(
                f"{row['subject']:<40} {row['limit']:<20} {row['used']:>10g} {allowed:>10} {resets}"
            )
