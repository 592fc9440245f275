"""The web client's page (the client itself is static: static/client/)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "index.html",
        {"heartbeat_s": settings.HEARTBEAT_INTERVAL_S, "chat_access": settings.CHAT_ACCESS},
    )
