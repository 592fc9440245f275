"""Render backends by name (settings.RENDER_BACKEND), imported on first use, one per process."""

from __future__ import annotations

import threading
from importlib import import_module

from django.conf import settings

from rendering.backends.base import RenderBackend

BACKENDS = {
    "lite": "rendering.backends.lite.LiteBackend",
    "echomimic": "rendering.backends.echomimic.EchoMimicBackend",
}

_instance: RenderBackend | None = None
_lock = threading.Lock()


def backend_class(name: str | None = None) -> type[RenderBackend]:
    module, _, attr = BACKENDS[name or settings.RENDER_BACKEND].rpartition(".")
    return getattr(import_module(module), attr)


def get_backend() -> RenderBackend:
    """The configured backend of this process, created (models loaded) on the first call."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = backend_class()()
        return _instance


def loaded_backend() -> RenderBackend | None:
    """The backend if this process has created it already (for heartbeats), without loading."""
    return _instance
