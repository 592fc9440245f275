"""Turn progress from Celery's own signals, published to the session from whichever worker
runs the step: `turn_progress` {message_id, step, state} (an extension of the protocol)."""

from __future__ import annotations

from typing import Any

from celery.signals import task_failure, task_prerun, task_retry, task_success

from chat.events import publish_sync

STEPS = {
    "chat.tasks.turn_transcribe": "transcribe",
    "chat.tasks.turn_reply": "reply",
    "chat.tasks.turn_synthesize": "synthesize",
}


def _publish(task: Any, state: str, request: Any = None) -> None:
    step = STEPS.get(getattr(task, "name", ""))
    if step is None:
        return
    request = request or task.request
    kwargs = request.kwargs or {}
    session_id = kwargs.get("session_id")
    if not session_id:
        return
    args = request.args or []
    event: dict[str, Any] = {
        "type": "turn_progress",
        "step": step,
        "state": state,
        "task_id": request.id,
    }
    if args:
        event["message_id"] = args[0]
    if kwargs.get("ref"):
        event["ref"] = kwargs["ref"]
    publish_sync(session_id, event)


@task_prerun.connect
def on_prerun(sender: Any = None, **kwargs: Any) -> None:
    _publish(sender, "started")


@task_success.connect
def on_success(sender: Any = None, **kwargs: Any) -> None:
    _publish(sender, "done")


@task_failure.connect
def on_failure(sender: Any = None, **kwargs: Any) -> None:
    _publish(sender, "failed")


@task_retry.connect
def on_retry(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    _publish(sender, "retrying", request)
