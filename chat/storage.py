"""Session files in Django storage (filesystem or S3-compatible), under one prefix per session.

Everything a turn creates lives under `sessions/<session_id>/`, so ending a session deletes one
prefix. A file written after its session ended (a late task) is deleted at once.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

from chat.models import ChatSession


def session_prefix(session_id: uuid.UUID | str) -> str:
    return f"sessions/{session_id}/"


def session_path(session_id: uuid.UUID | str, name: str) -> str:
    return session_prefix(session_id) + name


def public_url(name: str) -> str:
    """A URL an outside client or cloud service can fetch: presigned on S3, absolute when
    PUBLIC_BASE_URL is set, else site-relative."""
    url = default_storage.url(name)
    if url.startswith("/") and settings.PUBLIC_BASE_URL:
        return settings.PUBLIC_BASE_URL + url
    return url


def save_for_session(session_id: uuid.UUID | str, name: str, content: bytes | File) -> str | None:
    """Store a file of the session; returns its storage name, or None when the session has
    already ended (the file is then removed again, so nothing outlives the session)."""
    path = session_path(session_id, name)
    payload = ContentFile(content) if isinstance(content, bytes) else content
    if default_storage.exists(path):
        default_storage.delete(path)  # idempotent re-runs overwrite
    stored = default_storage.save(path, payload)
    if ChatSession.objects.filter(pk=session_id, ended_at__isnull=False).exists():
        default_storage.delete(stored)
        return None
    return stored


def list_session_files(session_id: uuid.UUID | str) -> list[str]:
    return _walk(session_prefix(session_id).rstrip("/"))


def _walk(prefix: str) -> list[str]:
    try:
        dirs, files = default_storage.listdir(prefix)
    except FileNotFoundError:
        return []
    found = [str(PurePosixPath(prefix) / f) for f in files]
    for d in dirs:
        found.extend(_walk(str(PurePosixPath(prefix) / d)))
    return found


def delete_session_files(session_id: uuid.UUID | str) -> int:
    """Delete every file under the session's prefix; returns how many were deleted."""
    files = list_session_files(session_id)
    for name in files:
        default_storage.delete(name)
    if default_storage.__class__.__name__ == "FileSystemStorage":
        _remove_empty_dirs(session_prefix(session_id))
    return len(files)


def _remove_empty_dirs(prefix: str) -> None:
    root = Path(settings.MEDIA_ROOT) / prefix
    if root.is_dir() and not any(p.is_file() for p in root.rglob("*")):
        shutil.rmtree(root, ignore_errors=True)
