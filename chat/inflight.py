"""The upload turn in flight of each session: its Celery task id, kept in Redis so that any
process (the web process of the session, the HTTP upload view, the cleanup) can stop it."""

from __future__ import annotations

import uuid

from chat.layers import shared_client

TURN_TTL_S = 3600


def _key(session_id: uuid.UUID | str) -> str:
    return f"echo:turn:{session_id}"


def set_turn(session_id: uuid.UUID | str, task_ids: list[str]) -> None:
    shared_client().set(_key(session_id), ",".join(task_ids), ex=TURN_TTL_S)


def finish_turn(session_id: uuid.UUID | str, task_id: str) -> None:
    """The turn whose task is `task_id` is over (done or failed)."""
    key = _key(session_id)
    current = shared_client().get(key)
    if current and task_id in current.decode().split(","):
        shared_client().delete(key)


def take_turn(session_id: uuid.UUID | str) -> list[str]:
    """The task ids of the turn in flight, which is then no longer registered."""
    value = shared_client().getdel(_key(session_id))
    return value.decode().split(",") if value else []
