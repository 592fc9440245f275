"""Progress of one render as the client sees it: 0-100, never decreasing, even across runs."""

from __future__ import annotations

import time
import uuid

from chat import protocol
from chat.events import publish_sync
from rendering import coordination

STAGES = ("started", "rendering", "encoding", "done")  # and "redelivered" (see below)
MIN_INTERVAL_S = 0.2  # at most ~5 events a second while rendering


class ProgressReporter:
    """Publishes `video_progress`; the maximum lives in Redis, so a redelivered task that
    starts again from 0 stays silent until it passes what the client has already seen."""

    def __init__(self, session_id: uuid.UUID | str, task_id: str) -> None:
        self.session_id, self.task_id = session_id, task_id
        self._last = -1
        self._last_at = 0.0
        self._stage = ""

    def __call__(self, percent: float, stage: str) -> None:
        value = max(0, min(100, int(percent)))
        now = time.monotonic()
        if value <= self._last:
            return
        if stage == self._stage and now - self._last_at < MIN_INTERVAL_S and value < 100:
            return  # every stage is published at least once, repeats at most 5 a second
        if not coordination.raise_progress(self.task_id, value):
            return
        self._last, self._last_at, self._stage = value, now, stage
        publish_sync(
            self.session_id,
            protocol.event(
                "video_progress", None, task_id=self.task_id, progress=value, stage=stage
            ),
        )

    def redelivered(self, attempt: int) -> None:
        """Tell the client that the render starts again after its worker was lost: the
        progress it has seen so far, stage `redelivered`, and which delivery this is."""
        seen = coordination.client().get(f"{coordination.PREFIX}progress:{self.task_id}")
        publish_sync(
            self.session_id,
            protocol.event(
                "video_progress",
                None,
                task_id=self.task_id,
                progress=max(0, int(seen or 0)),
                stage="redelivered",
                attempt=attempt,
            ),
        )
