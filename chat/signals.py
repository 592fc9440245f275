"""Celery signal handlers of the chat app's workers.

The upload turn reports its own progress, step by step (chat.upload_turn); what is left here is
what every task needs around it.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_postrun

from echoproject import logs


@task_postrun.connect
def forget_turn(**kwargs: Any) -> None:
    """The next task this process runs logs without the ids of this one's turn."""
    logs.unbind()
