"""How often a task's message was delivered to a worker, so that a lost worker's task is
redelivered but a task that kills its worker every time (poison) is not redelivered for ever.

The turn's tasks are acknowledged late and requeued when their pool process dies
(`acks_late` + `reject_on_worker_lost`): Celery then puts the message back at once and the
next delivery carries the same task id and retry count. Counting deliveries per (task id,
retry) in Redis tells a redelivery from a first run on any worker, and a step past
CELERY_TASK_MAX_DELIVERIES gives up with its stage's error code instead of running again.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from chat.layers import shared_client

PREFIX = "echo:deliveries:"
ONCE_PREFIX = "echo:once:"
TTL_S = 24 * 3600

client = shared_client  # one retrying, fork-safe pool per process (chat.layers)


def count(task_id: str, retries: int = 0) -> int:
    """Record one more delivery of this run of the task; returns its number (1 = first)."""
    key = f"{PREFIX}{task_id}:{retries}"
    pipe = client().pipeline()
    pipe.incr(key)
    pipe.expire(key, TTL_S)
    return int(pipe.execute()[0])


def delivery(request: Any) -> int:
    """The delivery number of the running task, counted once per delivery even when asked
    several times (by the task_prerun signal and by the task body)."""
    number = getattr(request, "echo_delivery", None)
    if number is None:
        number = count(request.id, request.retries or 0)
        request.echo_delivery = number
    return number


def step_delivery(task_id: str, step: str, retries: int = 0) -> tuple[int, bool]:
    """Record one more delivery of a step of the task (the upload turn runs its steps in one
    task); returns its number and whether an earlier delivery finished the step."""
    key = f"{PREFIX}{task_id}:{step}:{retries}"
    pipe = client().pipeline()
    pipe.incr(key)
    pipe.expire(key, TTL_S)
    pipe.exists(f"{ONCE_PREFIX}step:{task_id}:{step}")
    number, _, finished = pipe.execute()
    return int(number), bool(finished)


def finish_step(task_id: str, step: str) -> None:
    """The step is done: a redelivery of its task skips it."""
    mark_done(f"step:{task_id}:{step}")


def exhausted(number: int) -> bool:
    """True for a delivery past the bound: the earlier ones all lost their worker."""
    return number > settings.CELERY_TASK_MAX_DELIVERIES


def done(name: str) -> bool:
    return bool(client().exists(ONCE_PREFIX + name))


def mark_done(name: str) -> None:
    """Remember that an event went out, so that a redelivered step does not send it again."""
    client().set(ONCE_PREFIX + name, "1", ex=TTL_S)
