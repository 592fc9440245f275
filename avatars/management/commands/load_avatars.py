"""Loads avatar characters from a JSON fixture, copying their portraits into media storage.

Idempotent: avatars are matched by slug, fields updated, and the image stored again only when
it is missing from storage. Works on every storage backend (filesystem, S3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser

from avatars.models import Avatar

FIELDS = [
    "name",
    "persona",
    "greeting",
    "voice",
    "language",
    "enabled",
    "mouth_x",
    "mouth_y",
    "face",
]


class Command(BaseCommand):
    help = "Create or update avatars from fixtures/avatars.json (or --path)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--path", default=str(settings.BASE_DIR / "fixtures" / "avatars.json"))

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        try:
            entries = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"cannot read avatar fixture {path}: {exc}") from None
        for entry in entries:
            self._load(entry, path.parent)

    def _load(self, entry: dict[str, Any], base: Path) -> None:
        slug = entry.get("slug")
        if not slug or "image" not in entry:
            raise CommandError(f"avatar entry needs a slug and an image: {entry!r}")
        image_path = base / entry["image"]
        if not image_path.is_file():
            raise CommandError(f"avatar {slug}: image {image_path} not found")
        defaults = {field: entry[field] for field in FIELDS if field in entry}
        avatar, created = Avatar.objects.update_or_create(slug=slug, defaults=defaults)
        if not avatar.image or not avatar.image.storage.exists(avatar.image.name):
            with image_path.open("rb") as handle:
                avatar.image.save(f"{slug}{image_path.suffix}", File(handle), save=True)
        self.stdout.write(f"{'created' if created else 'updated'} avatar {slug}")
