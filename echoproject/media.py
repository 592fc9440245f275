"""Serving MEDIA_ROOT from the web process (the embedded set-up; at scale a CDN or S3 does it).

Django's `serve` refuses a path that leaves MEDIA_ROOT with SuspiciousFileOperation, which the
request handler logs as an error with a full traceback: one crawler probing `../` then fills
the log. A traversal attempt is routine hostile input, so it gets one warning line here.
"""

from __future__ import annotations

import errno
import logging

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.static import serve

log = logging.getLogger(__name__)


def serve_media(request: HttpRequest, path: str) -> HttpResponse:
    """A file under MEDIA_ROOT; 400 (as before) and one log line for a path outside it, 404
    for one the filesystem cannot even look up (a name too long: ENAMETOOLONG)."""
    try:
        return serve(request, path, document_root=settings.MEDIA_ROOT)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise Http404("no such file") from exc
    except SuspiciousFileOperation:
        log.warning(
            "refused media path outside MEDIA_ROOT: %r from %s",
            path[:200],
            request.META.get("REMOTE_ADDR", "?"),
        )
        return HttpResponseBadRequest("Bad Request (400)", content_type="text/plain")
