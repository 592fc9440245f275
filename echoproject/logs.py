"""Log lines of every process: readable text by default, one JSON object a line with
LOG_FORMAT=json (python-json-logger), and on every line logged while a turn is handled the
session and the turn it belongs to, in the web process and in the workers alike.

The ids travel in a context variable: `turn_context(session_id, turn_id)` around the code of a
turn (a reply in the web process's event loop, a step of the upload chain in a worker) puts
them on every record logged inside it, whichever module logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

IDS = ("session_id", "turn_id")
_ids: ContextVar[dict[str, str]] = ContextVar("echoproject_log_ids", default={})  # noqa: B039


@contextmanager
def turn_context(session_id: Any, turn_id: Any = None) -> Iterator[None]:
    """Every record logged inside carries `session_id` (and `turn_id` when given)."""
    ids = {"session_id": str(session_id)}
    if turn_id is not None:
        ids["turn_id"] = str(turn_id)
    token = _ids.set(ids)
    try:
        yield
    finally:
        _ids.reset(token)


def bind(session_id: Any, turn_id: Any = None) -> None:
    """Set the ids for the rest of the current context (a Celery task, an asyncio task)."""
    ids = {"session_id": str(session_id)}
    if turn_id is not None:
        ids["turn_id"] = str(turn_id)
    _ids.set(ids)


def unbind() -> None:
    _ids.set({})


class TurnContextFilter(logging.Filter):
    """Adds the current session and turn ids to a record (unless it names its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _ids.get().items():
            if not getattr(record, key, None):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [session=… turn=…]`: the ids only where there are some."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{key[:-3]}={value}" for key in IDS if (value := getattr(record, key, None))]
        if not ids:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the line
        return f"{head} [{' '.join(ids)}]{newline}{rest}"


class JsonFormatter(_JsonFormatter):
    """One JSON object a line: time, level, logger, message and every `extra` field (the ids,
    a turn's stage times)."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
