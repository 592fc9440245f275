from __future__ import annotations

from django.apps import AppConfig


class RenderingConfig(AppConfig):
    name = "rendering"
    verbose_name = "Rendering"

    def ready(self) -> None:
        """Give chat its renderer (chat.video); imported here because models load after apps."""
        from chat import video
        from rendering.control import cancel_render
        from rendering.scheduler import submit_render

        video.register(video.Renderer(submit=submit_render, cancel=cancel_render))
