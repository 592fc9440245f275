"""`manage.py check_providers`: one line per configured backend — works or not, and how fast —
and one per avatar with a cloned voice: usable or not (its turns then speak the preset)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from avatars.checks import STAGE as VOICE_STAGE
from avatars.checks import check_cloned_voices
from chat.providers.checks import STAGES, check_all
from chat.providers.cloud import run_once


class Command(BaseCommand):
    help = "Make a short real call to each configured ASR, LLM and TTS backend and time it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stage",
            action="append",
            choices=[*STAGES, VOICE_STAGE],
            help="Check only this stage (repeatable); 'voice': the avatars' cloned voices.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        chosen = options["stage"] or [*STAGES, VOICE_STAGE]
        stages = tuple(stage for stage in chosen if stage in STAGES)
        results = run_once(check_all(stages)) if stages else []
        if VOICE_STAGE in chosen:
            results += check_cloned_voices()
        for result in results:
            style = self.style.SUCCESS if result.ok else self.style.ERROR
            status = style(f"{'ok' if result.ok else 'failed':<6}")
            self.stdout.write(
                f"{result.stage:<4} {result.backend:<13} {status} "
                f"{result.milliseconds:8.0f} ms  {result.detail}"
            )
        failed = [result for result in results if not result.ok]
        if failed:
            names = ", ".join(f"{r.stage} ({r.backend})" for r in failed)
            raise CommandError(f"provider check failed: {names}")
