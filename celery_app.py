"""The Celery app shared by the speech and render workers, beat and flower.

Configuration lives in Django settings (the CELERY_ namespace): queues, routes, time limits.
Render workers also consume their own queue `render.<nodename>`, which the scheduler uses to
send a task to one chosen worker.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")

from echoproject.env import exit_on_settings_error  # noqa: E402

exit_on_settings_error()

app = Celery("echoproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

SPEECH_QUEUE = "speech"
RENDER_QUEUE = "render"
PREPARE_TASK = "rendering.tasks.prepare_avatar"  # on render queues, but not a video waiting


def worker_queue(nodename: str) -> str:
    """The name of the queue only the render worker `nodename` consumes."""
    return f"{RENDER_QUEUE}.{nodename}"


@celeryd_after_setup.connect
def add_own_render_queue(sender: str, instance: Any, **kwargs: Any) -> None:
    """A worker on the shared render queue also listens on its own queue."""
    queues = instance.app.amqp.queues
    if RENDER_QUEUE in queues.consume_from:
        queues.select_add(worker_queue(sender))


@setup_logging.connect
def log_like_the_web_process(**kwargs: Any) -> None:
    """Workers and beat log through the settings' LOGGING (LOG_FORMAT, the session and turn
    ids of echoproject.logs) instead of Celery's own format."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
