"""Celery tasks of the speech workers (queue `speech`): the upload turn and the cleanup.

Tasks take IDs; the work itself lives in the modules they call (chat.upload_turn,
chat.sessions).
"""

from __future__ import annotations

from celery import Task, shared_task

from chat import sessions
from chat.upload_turn import RETRY_BACKOFF_S, UploadTurn


@shared_task(ignore_result=True)
def cleanup_sessions() -> dict[str, int]:
    """Periodic (beat): end idle sessions, purge history past retention."""
    return sessions.cleanup()


# Acknowledged when done, requeued when the pool process running it dies (chat.upload_turn);
# no result: nobody waits for one.
@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=len(RETRY_BACKOFF_S),
)
def upload_turn(
    self: Task,
    message_id: int,
    *,
    session_id: str,
    ref: str | None = None,
    sent_at: float | None = None,
) -> None:
    """The upload turn of the user message `message_id`: transcribe → reply → synthesize.
    `sent_at`: when the upload sent the task (time.time()), for the queue wait. The turn's ref
    is read off the user message (its arguments, which Flower shows, are ids only); `ref` is
    only taken from tasks sent before."""
    UploadTurn(self, message_id, session_id, ref, sent_at).run()
