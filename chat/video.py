"""What chat needs from the video renderer, and nothing more.

The rendering app registers the implementation when Django loads it (rendering/apps.py), so
chat never imports rendering and the dependency between the two packages runs one way,
rendering → chat (rendering uses chat's models, events, storage and protocol). A process
without the rendering app fails loudly on the first video turn instead of at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class RenderBusy(Exception):
    """No render capacity: every worker's backlog together is past RENDER_MAX_BACKLOG."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Renderer:
    # queue the render of an assistant message; `ref` comes back on its error; may raise RenderBusy
    submit: Callable[[int, str | None], object]
    # revoke a render and delete what it wrote
    cancel: Callable[[str], None]
    # the URL of the avatar's idle loop (played between replies), None while there is none
    idle_url: Callable[[Any], str | None] = lambda avatar: None


_renderer: Renderer | None = None


def register(renderer: Renderer) -> None:
    global _renderer
    _renderer = renderer


def renderer() -> Renderer:
    if _renderer is None:
        raise RuntimeError("no video renderer registered: is 'rendering' in INSTALLED_APPS?")
    return _renderer
