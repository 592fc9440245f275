"""Stopping renders: interrupt and session end call cancel_render."""

from __future__ import annotations

import logging

from celery_app import app
from chat.models import Message
from rendering import coordination
from rendering.outputs import delete_outputs

log = logging.getLogger(__name__)


def cancel_render(task_id: str) -> None:
    """Revoke the render and delete what it wrote.

    The Redis flag is what stops a running render reliably: the render loop checks it
    between batches of frames and before publishing each segment, deletes its files and
    returns. Revoke drops a task still waiting in a queue, and the soft-time-limit signal
    makes a prefork child leave the loop at once (with the solo or thread pools it does
    nothing, the flag still works)."""
    if not task_id:
        return
    coordination.mark_cancelled(task_id)
    app.control.revoke(task_id, terminate=True, signal="SIGUSR1")
    for message in Message.objects.filter(render_task_id=task_id).only("id", "session_id"):
        deleted = delete_outputs(message.session_id, message.id)
        Message.objects.filter(pk=message.pk).update(video="")
        log.info("render %s cancelled, %d files deleted", task_id, deleted)
