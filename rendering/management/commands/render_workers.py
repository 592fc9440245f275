"""`manage.py render_workers`: the render workers the scheduler sees, and their state."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from rendering import coordination


class Command(BaseCommand):
    help = "List render workers from their Redis heartbeats (dead ones too with --all)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="include dead (stale) workers")
        parser.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        workers = coordination.read_workers(include_stale=options["all"])
        if options["json"]:
            self.stdout.write(json.dumps(workers, indent=2))
            return
        if not workers:
            self.stdout.write("no render workers")
            return
        self.stdout.write(
            f"{'worker':40} {'state':6} {'backlog':>7} {'device':8} {'age':>6}  "
            "current task / warm avatars"
        )
        for w in workers:
            state = w.get("state", "?") if w["alive"] else "dead"
            self.stdout.write(
                f"{w['nodename']:40} {state:6} {w.get('backlog', 0):>7} "
                f"{str(w.get('device', '?')):8} {w['age_s']:>5.1f}s  "
                f"{w.get('current_task') or '-'} / {w.get('warm_avatars') or []}"
            )
