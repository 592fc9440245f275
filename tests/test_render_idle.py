"""The idle loop: each avatar breathes and blinks between replies instead of freezing.

The lite backend makes a short silent clip that loops without a jump; a render worker makes it
when an avatar is saved (and prepares the avatar's portrait for its first reply), stores it
under a name tied to the portrait and its landmarks, and a video session's `init` names it.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from django.core.files.storage import default_storage

from rendering import coordination
from rendering.backends.lite import IDLE_LOOP_S, LiteBackend
from rendering.idle import IDLE_DIR, idle_name
from tests.fixtures_rendering import start_render_worker
from tests.fixtures_sessions import run
from tests.procs import Proc

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = {
    entry["slug"]: entry for entry in json.loads((ROOT / "fixtures/avatars.json").read_text())
}


def grey_frames(path: Path) -> tuple[list[np.ndarray], Any]:
    with av.open(str(path)) as container:
        streams = [s.type for s in container.streams]
        rate = container.streams.video[0].average_rate
        frames = [f.to_ndarray(format="gray").astype(np.float32) for f in container.decode(video=0)]
    return frames, (streams, rate)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="module")
def backend() -> LiteBackend:
    return LiteBackend()


@pytest.mark.parametrize("slug", ["astra", "aria"])
def test_idle_clip_moves_and_loops_without_a_jump(
    backend: LiteBackend, slug: str, tmp_path: Path
) -> None:
    """The photograph (Astra, with landmarks) and a drawing (Aria, from its mouth point)."""
    entry = FIXTURES[slug]
    clip = backend.idle_clip(
        ROOT / "fixtures" / entry["image"],
        tmp_path / "idle.mp4",
        mouth=(entry["mouth_x"], entry["mouth_y"]),
        face=entry.get("face"),
    )
    frames, (streams, rate) = grey_frames(clip)
    assert streams == ["video"], "a silent clip: the client plays it muted, in a loop"
    assert rate == 25 and len(frames) == round(IDLE_LOOP_S * 25)
    assert frames[0].shape == (512, 512)
    # it moves: breathing and sway shift the face by several grey levels on average
    motion = max(mean_diff(f, frames[0]) for f in frames)
    assert motion > 3.0, motion
    steps = [mean_diff(a, b) for a, b in zip(frames, frames[1:], strict=False)]
    # ... smoothly, and from the last frame back to the first as from one frame to the next:
    # the seam is within a few steps (the codec refreshes the whole picture on the first
    # frame, which moves it by about one step more) and far below the motion itself
    seam = mean_diff(frames[-1], frames[0])
    assert seam < 2.5 * max(steps) and seam < 0.25 * motion, (seam, max(steps), motion)
    assert max(steps) < 0.25 * motion, "no frame jumps"


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def warm_avatars(worker: str) -> list[int]:
    """The avatars the render worker named `worker@…` says it has prepared."""
    beats = [b for b in coordination.read_workers() if b["nodename"].startswith(worker + "@")]
    return beats[0]["warm_avatars"] if beats else []


@pytest.mark.django_db(transaction=True)
def test_a_saved_avatar_is_prepared_and_a_video_session_gets_its_idle_loop(
    render_worker: Proc, preparing_avatars: None, live_avatars: list, connect: Any
) -> None:
    astra = next(a for a in live_avatars if a.slug == "astra")
    name = idle_name(astra)
    wait_for(lambda: default_storage.exists(name), 90, "the idle loop in storage")
    # the portrait is prepared on the worker, so the scheduler sends its replies there
    wait_for(lambda: astra.pk in warm_avatars("render-a"), 30, "astra warm on the worker")

    async def init(query: str) -> dict:
        async with connect(query) as client:
            return await client.recv()

    video = run(init("?mode=video&avatar=astra"))
    url = video["avatar"]["idle_video_url"]
    assert url and url.split("?")[0].endswith(name)
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    assert body[4:8] == b"ftyp", "an MP4"
    voice = run(init("?mode=voice&avatar=astra"))
    assert voice["avatar"]["idle_video_url"] is None

    # new landmarks: a new clip under a new name, and the old one is gone
    astra.mouth_y = round(astra.mouth_y + 0.01, 4)
    astra.face = {}
    astra.save()
    renamed = idle_name(astra)
    assert renamed != name
    wait_for(lambda: default_storage.exists(renamed), 90, "the new idle loop")
    wait_for(lambda: not default_storage.exists(name), 10, "the old idle loop deleted")
    _, left = default_storage.listdir(IDLE_DIR)
    assert [f for f in left if f.startswith(f"{astra.pk}-")] == [renamed.rsplit("/", 1)[1]]


@pytest.mark.django_db(transaction=True)
def test_a_render_worker_prepares_the_known_avatars_when_it_starts(
    live_avatars: list, log_dir: Path
) -> None:
    """Avatars saved before the worker started (no save reaches it): it prepares them itself."""
    proc = start_render_worker(log_dir, "render-start", RENDER_PREPARE_AVATARS="true")
    try:
        known = {avatar.pk for avatar in live_avatars}
        wait_for(lambda: known <= set(warm_avatars("render-start")), 90, "every avatar warm")
        for avatar in live_avatars:
            wait_for(lambda a=avatar: default_storage.exists(idle_name(a)), 60, "idle loops")
    finally:
        proc.stop()
