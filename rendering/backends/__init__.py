"""Render backends by name (settings.RENDER_BACKEND), imported on first use, one per process
(echoproject.backends, the same mechanism as the speech providers')."""

from __future__ import annotations

from echoproject.backends import Backends
from rendering.backends.base import RenderBackend

BACKENDS = {
    "lite": "rendering.backends.lite.LiteBackend",
    "echomimic": "rendering.backends.echomimic.EchoMimicBackend",
}

_backends: Backends[RenderBackend] = Backends("RENDER_BACKEND", BACKENDS)


def backend_class(name: str | None = None) -> type[RenderBackend]:
    return _backends.backend_class(name)


def get_backend() -> RenderBackend:
    """The configured backend of this process, created (models loaded) on the first call."""
    return _backends.get()


def loaded_backend() -> RenderBackend | None:
    """The backend if this process has created it already (for heartbeats), without loading."""
    return _backends.loaded()
