"""Turn progress from Celery's own signals, published to the session from whichever worker
runs the step: `turn_progress` {message_id, step, state} (an extension of the protocol).

A step's delivery after its worker was lost first says `redelivered` (with the delivery's
`attempt`), and a step that fails on an exception says `failed` followed by the stage's error
code, so that `failed` is never the last thing a client hears.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_failure, task_postrun, task_prerun, task_retry, task_success

from chat import deliveries, protocol
from chat.events import publish_sync
from chat.models import Message, Role
from chat.tasks import fail_step
from echoproject import logs

log = logging.getLogger(__name__)

STEPS = {
    "chat.tasks.turn_transcribe": "transcribe",
    "chat.tasks.turn_reply": "reply",
    "chat.tasks.turn_synthesize": "synthesize",
}


def publish_progress(
    step: str,
    state: str,
    task_id: str,
    session_id: str,
    message_id: int | None,
    ref: str | None,
    **extra: Any,
) -> None:
    if message_id is not None:
        extra["message_id"] = message_id
    event = protocol.event("turn_progress", ref, step=step, state=state, task_id=task_id, **extra)
    publish_sync(session_id, event)


def _step(task: Any, request: Any) -> tuple[str, str, int | None, str | None] | None:
    """(step, session_id, message_id, ref) of a turn step's request, None for other tasks."""
    step = STEPS.get(getattr(task, "name", ""))
    if step is None or request is None:
        return None
    kwargs = request.kwargs or {}
    session_id = kwargs.get("session_id")
    if not session_id:
        return None
    args = request.args or []
    return step, session_id, (args[0] if args else None), kwargs.get("ref")


def _publish(task: Any, state: str, request: Any = None, **extra: Any) -> None:
    request = request or task.request
    found = _step(task, request)
    if found is not None:
        step, session_id, message_id, ref = found
        publish_progress(step, state, request.id, session_id, message_id, ref, **extra)


@task_prerun.connect
def on_prerun(sender: Any = None, **kwargs: Any) -> None:
    if _step(sender, sender.request) is None:
        return
    number = deliveries.delivery(sender.request)
    if deliveries.exhausted(number):
        return  # the step gives up at once and says so (chat.tasks._begin)
    if number > 1:
        _publish(sender, "redelivered", attempt=number, **_restarted_reply(sender))
    _publish(sender, "started")


def _restarted_reply(task: Any) -> dict[str, Any]:
    """For a redelivered reply step: the reply the lost run had begun (and maybe streamed
    deltas of), which starts again from its beginning; the client clears its text."""
    found = _step(task, task.request)
    if found is None or found[0] != "reply" or found[2] is None:
        return {}
    reply = (
        Message.objects.filter(reply_to_id=found[2], role=Role.ASSISTANT, text="", error_code="")
        .order_by("id")
        .values_list("id", flat=True)
        .last()
    )
    return {"reply_message_id": reply} if reply is not None else {}


@task_success.connect
def on_success(sender: Any = None, **kwargs: Any) -> None:
    _publish(sender, "done")


@task_failure.connect
def on_failure(sender: Any = None, exception: BaseException | None = None, **kwargs: Any) -> None:
    """An exception the step did not handle (a bug, a hard time limit, a worker lost where it
    could not be requeued): `failed`, then the stage's error code, kept on the message."""
    found = _step(sender, sender.request)
    if found is None:
        return
    step, session_id, message_id, ref = found
    _publish(sender, "failed")
    reason = exception.__class__.__name__ if exception is not None else "an error"
    try:
        fail_step(
            step,
            message_id,
            session_id,
            ref,
            sender.request.id,
            f"the {step} step failed ({reason})",
        )
    except Exception:  # the signal must not hide the task's own failure
        log.exception("could not report the failure of %s", sender.request.id)


@task_retry.connect
def on_retry(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    _publish(sender, "retrying", request)


@task_postrun.connect
def forget_turn(**kwargs: Any) -> None:
    """The next task this process runs logs without the ids of this one's turn."""
    logs.unbind()
