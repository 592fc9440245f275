"""Serving MEDIA_ROOT from the web process (the embedded set-up; at scale a CDN or S3 does it).

A session's files (`sessions/<id>/…`) are served only through the URLs chat.storage signs: the
signature covers the file's name, which holds its session, and an expiry, so a URL opens that
one file until then; a tampered, expired or borrowed one is 403. Other media (avatar portraits)
stay public. Every answer names its type, says `nosniff` and `inline` with the file name, and
takes one byte range (`Range: bytes=a-b`), which video players use to seek.

Django's `serve` refuses a path that leaves MEDIA_ROOT with SuspiciousFileOperation, which the
request handler logs as an error with a full traceback: one crawler probing `../` then fills
the log. A traversal attempt is routine hostile input, so it gets one warning line here.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
)
from django.utils._os import safe_join
from django.views.decorators.http import require_safe

from chat.storage import media_signature_ok

log = logging.getLogger(__name__)
TYPES = {
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".mp3": "audio/mpeg",
    ".webm": "audio/webm",
    ".ogg": "audio/ogg",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@require_safe
def serve_media(request: HttpRequest, path: str) -> HttpResponse:
    """A file under MEDIA_ROOT: 403 for a session's file without a valid signature, 400 (and
    one log line) for a path outside MEDIA_ROOT, 404 for one that is not there."""
    try:
        full = Path(safe_join(settings.MEDIA_ROOT, path))
    except SuspiciousFileOperation:
        log.warning(
            "refused media path outside MEDIA_ROOT: %r from %s",
            path[:200],
            request.META.get("REMOTE_ADDR", "?"),
        )
        return HttpResponseBadRequest("Bad Request (400)", content_type="text/plain")
    # the name the path resolves to, not the path as sent: `avatars/../sessions/…` or
    # `./sessions/…` name a session's file too, and need its signature as much
    name = PurePosixPath(os.path.relpath(full, os.path.abspath(settings.MEDIA_ROOT))).as_posix()
    if name.startswith("sessions/") and not media_signature_ok(
        name, request.GET.get("e", ""), request.GET.get("s", "")
    ):
        return HttpResponseForbidden("Forbidden (403)", content_type="text/plain")
    try:
        handle = full.open("rb")
        size = full.stat().st_size
    except OSError as exc:  # missing, a directory, or a name too long to look up
        raise Http404("no such file") from exc
    return _file_response(request, handle, size, PurePosixPath(path).name)


def _file_response(request: HttpRequest, handle: object, size: int, name: str) -> HttpResponse:
    content_type = TYPES.get(PurePosixPath(name).suffix.lower())
    if content_type is None:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    first, last = 0, size - 1
    status = 200
    wanted = _range(request.headers.get("Range", ""), size)
    if wanted == "unsatisfiable":
        handle.close()  # type: ignore[attr-defined]
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    if wanted is not None:
        first, last = wanted
        status = 206
        handle.seek(first)  # type: ignore[attr-defined]
    response = FileResponse(
        _limited(handle, last - first + 1), status=status, content_type=content_type
    )
    response["Content-Length"] = str(last - first + 1)
    if status == 206:
        response["Content-Range"] = f"bytes {first}-{last}/{size}"
    response["Accept-Ranges"] = "bytes"
    response["Content-Disposition"] = f'inline; filename="{name}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _range(header: str, size: int) -> tuple[int, int] | str | None:
    """(first, last) of one `bytes=` range, "unsatisfiable", or None for the whole file (no
    header, or one this server does not take, such as several ranges)."""
    match = RANGE.match(header.strip())
    if match is None or size == 0:
        return None
    start, end = match.groups()
    if not start and not end:
        return None
    if not start:  # the last N bytes
        count = int(end)
        if count == 0:
            return "unsatisfiable"
        return max(0, size - count), size - 1
    first = int(start)
    last = min(int(end), size - 1) if end else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, last


def _limited(handle: object, length: int, chunk: int = 64 * 1024):  # noqa: ANN202
    """The next `length` bytes of an open file, in chunks; closes it at the end."""
    try:
        left = length
        while left > 0:
            data = handle.read(min(chunk, left))  # type: ignore[attr-defined]
            if not data:
                break
            left -= len(data)
            yield data
    finally:
        handle.close()  # type: ignore[attr-defined]
