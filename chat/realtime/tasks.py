"""The background tasks of one realtime object, all cancelled together when it closes.

Every part of the realtime path starts tasks (track readers, recognisers, callbacks); each keeps
them here so that closing a session leaves none behind, and so that a task failing with nobody
awaiting it is logged instead of lost ("Task exception was never retrieved").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class Tasks:
    """A set of running tasks: `spawn` adds one, `cancel` stops them all and waits."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("realtime task %s failed", task.get_name(), exc_info=task.exception())

    async def wait(self) -> None:
        """Wait until every task (including ones started meanwhile) has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task but the calling one, and wait for them to end."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
