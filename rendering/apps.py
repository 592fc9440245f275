from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save


class RenderingConfig(AppConfig):
    name = "rendering"
    verbose_name = "Rendering"

    def ready(self) -> None:
        """Give chat its renderer (chat.video); imported here because models load after apps.
        Render workers prepare an avatar when it is saved (rendering.idle)."""
        from avatars.models import Avatar
        from chat import video
        from rendering.control import cancel_render
        from rendering.idle import idle_url
        from rendering.scheduler import submit_render

        video.register(
            video.Renderer(submit=submit_render, cancel=cancel_render, idle_url=idle_url)
        )
        post_save.connect(avatar_saved, sender=Avatar, dispatch_uid="rendering-avatar-saved")
        post_delete.connect(avatar_deleted, sender=Avatar, dispatch_uid="rendering-avatar-deleted")


def avatar_saved(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    """A new or changed avatar: every live render worker prepares it once the save commits."""
    if raw or not instance.image or not settings.RENDER_PREPARE_AVATARS:
        return
    from rendering.idle import request_prepare

    transaction.on_commit(lambda: request_prepare(instance))


def avatar_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    from rendering.idle import delete_clips

    avatar_id = instance.pk
    transaction.on_commit(lambda: delete_clips(avatar_id))
