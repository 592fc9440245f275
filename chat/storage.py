"""Session files in Django storage (filesystem or S3-compatible), under one prefix per session.

Everything a turn creates lives under `sessions/<session_id>/`, so ending a session deletes one
prefix. A file written after its session ended (a late task) is deleted at once.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlencode

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.utils.crypto import constant_time_compare, salted_hmac

from chat.models import ChatSession

NAME_SALT = "echoproject.chat.storage.name"
URL_SALT = "echoproject.chat.storage.url"


def session_prefix(session_id: uuid.UUID | str) -> str:
    return f"sessions/{session_id}/"


def session_path(session_id: uuid.UUID | str, name: str) -> str:
    return session_prefix(session_id) + name


def unguessable(session_id: uuid.UUID | str, name: str) -> str:
    """`name` (like `audio/user-12.wav`) with a keyed token before its extension, so that no
    one can name a session's files from its id and the message ids: `audio/user-12-<token>.wav`.
    The token is an HMAC of the session and the name, so a re-run writes the same file again."""
    path = PurePosixPath(name)
    token = salted_hmac(NAME_SALT, f"{session_id}/{name}").hexdigest()[:20]
    return str(path.with_name(f"{path.stem}-{token}{path.suffix}"))


def public_url(name: str) -> str:
    """A URL an outside client or cloud service can fetch: presigned on S3 (S3_URL_EXPIRY_S);
    on the filesystem signed by the web app for MEDIA_URL_EXPIRY_S when it is a session's file
    (echoproject.media checks it); absolute when PUBLIC_BASE_URL is set, else site-relative."""
    if name.startswith("sessions/") and not _filesystem():
        filename = PurePosixPath(name).name
        url = default_storage.url(
            name, parameters={"ResponseContentDisposition": f'inline; filename="{filename}"'}
        )
    else:
        url = default_storage.url(name)
        if name.startswith("sessions/"):
            url += "?" + urlencode(sign_media(name))
    if url.startswith("/") and settings.PUBLIC_BASE_URL:
        return settings.PUBLIC_BASE_URL + url
    return url


def _filesystem() -> bool:
    return default_storage.__class__.__name__ == "FileSystemStorage"


def sign_media(name: str, expires: int | None = None) -> dict[str, str]:
    """The query of a signed media URL: expiry and an HMAC over the file's name (which holds
    its session) and the expiry, so that it opens this file of this session until then."""
    if expires is None:
        expires = int(time.time()) + settings.MEDIA_URL_EXPIRY_S
    return {"e": str(expires), "s": _media_signature(name, expires)}


def media_signature_ok(name: str, expires: str, signature: str) -> bool:
    """Whether (expires, signature) of a request is ours for `name` and not yet expired."""
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return constant_time_compare(_media_signature(name, int(expires)), signature)


def _media_signature(name: str, expires: int) -> str:
    return salted_hmac(URL_SALT, f"{name}|{expires}", algorithm="sha256").hexdigest()[:32]


def save_for_session(session_id: uuid.UUID | str, name: str, content: bytes | File) -> str | None:
    """Store a file of the session under an unguessable name; returns its storage name, or
    None when the session has already ended (the file is then removed again, so nothing
    outlives the session; a session whose history is gone has ended too)."""
    path = session_path(session_id, unguessable(session_id, name))
    payload = ContentFile(content) if isinstance(content, bytes) else content
    if default_storage.exists(path):
        default_storage.delete(path)  # idempotent re-runs overwrite
    stored = default_storage.save(path, payload)
    if not ChatSession.objects.filter(pk=session_id, ended_at__isnull=True).exists():
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
    try:
        if any(p.is_file() for p in root.rglob("*")):
            return
    except FileNotFoundError:  # another end of the session (the cleanup's) removed it meanwhile
        return
    shutil.rmtree(root, ignore_errors=True)
