"""Where a message's video files live in session storage, and how they are removed."""

from __future__ import annotations

import uuid

from django.core.files.storage import default_storage

from chat.storage import session_path


def video_dir(message_id: int) -> str:
    return f"video/{message_id}"


def segment_name(message_id: int, index: int) -> str:
    """Idempotent names: a second run of the same render overwrites the first's files."""
    return f"{video_dir(message_id)}/segment-{index:03d}.mp4"


def video_name(message_id: int) -> str:
    return f"{video_dir(message_id)}/video.mp4"


def delete_outputs(session_id: uuid.UUID | str, message_id: int) -> int:
    """Delete every file a render of the message wrote; returns how many."""
    prefix = session_path(session_id, video_dir(message_id))
    try:
        _, files = default_storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for name in files:
        default_storage.delete(f"{prefix}/{name}")
    return len(files)
