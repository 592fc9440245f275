"""The scheduler's choices from worker heartbeats in real Redis, and the heartbeat itself."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError

from celery_app import RENDER_QUEUE, worker_queue
from rendering import coordination, heartbeat
from rendering.scheduler import RenderBusy, choose, submit_render, worker_loads
from tests.audio import speak
from tests.fixtures_rendering import EventListener, make_reply


@pytest.fixture(scope="module")
def spare_redis_url() -> Iterator[str]:
    from tests.isolation import separate_redis

    with separate_redis() as redis_url:
        yield redis_url


@pytest.fixture
def fake_registry(spare_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Redis database of its own for the registry and the queues, so that the live workers of
    other tests neither take part nor take the fake workers' tasks."""
    r = redis.Redis.from_url(spare_redis_url)
    monkeypatch.setattr(coordination, "client", lambda: r)
    yield r
    r.flushdb()


def beat(
    r: Any,
    name: str,
    *,
    backlog: int = 0,
    warm: list[int] | None = None,
    age: float = 0.0,
    concurrency: int = 1,
    tasks: list[str] | None = None,
) -> str:
    node = f"{name}@gpu"
    data = {
        "nodename": node,
        "host": "gpu",
        "state": "busy" if backlog else "idle",
        "current_task": (tasks or [None])[0],
        "tasks": tasks or [],
        "backlog": backlog,
        "concurrency": concurrency,
        "warm_avatars": warm or [],
        "device": "cuda",
        "ts": time.time() - age,
    }
    r.set(coordination.worker_key(node), json.dumps(data), ex=60)
    r.set(coordination.last_key(node), json.dumps(data), ex=60)
    r.zadd(coordination.WORKERS, {node: data["ts"]})
    return node


def test_idle_worker_gets_the_task_on_its_own_queue(fake_registry: Any) -> None:
    beat(fake_registry, "busy", backlog=1)
    idle = beat(fake_registry, "idle")
    assert choose(worker_loads(avatar_id=1), 0) == (worker_queue(idle), 0)


def test_a_worker_with_the_avatar_warm_is_preferred(fake_registry: Any) -> None:
    for i in range(4):
        beat(fake_registry, f"cold{i}", warm=[2, 3])
    warm = beat(fake_registry, "warm", warm=[7])
    for _ in range(5):
        assert choose(worker_loads(avatar_id=7), 0) == (worker_queue(warm), 0)


def test_dead_workers_are_never_chosen(fake_registry: Any) -> None:
    beat(fake_registry, "dead", age=60)
    alive = beat(fake_registry, "alive", backlog=1)
    assert [w.nodename for w in worker_loads(None)] == [alive]
    assert choose(worker_loads(None), 0) == (RENDER_QUEUE, 1)


def test_every_worker_busy_falls_back_to_the_shared_queue_with_its_position(
    fake_registry: Any,
) -> None:
    beat(fake_registry, "a", backlog=1)
    beat(fake_registry, "b", backlog=1)
    assert choose(worker_loads(None), 2) == (RENDER_QUEUE, 3)


def test_tasks_sent_since_the_last_heartbeat_count_as_load(fake_registry: Any) -> None:
    node = beat(fake_registry, "only")
    fake_registry.zadd(coordination.claims_key(node), {"t1": time.time() + 1})
    assert choose(worker_loads(None), 0) == (RENDER_QUEUE, 1)


def test_backlog_past_the_limit_is_refused(fake_registry: Any, settings: Any) -> None:
    settings.RENDER_MAX_BACKLOG = 3
    beat(fake_registry, "a", backlog=1)
    beat(fake_registry, "b", backlog=1)
    choose(worker_loads(None), 0)
    with pytest.raises(RenderBusy) as info:
        choose(worker_loads(None), 1)
    assert "busy" in info.value.message


@pytest.mark.django_db(transaction=True)
def test_submit_render_sends_to_the_chosen_queue_and_announces_it(
    fake_registry: Any, video_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rendering.tasks import render_video

    sent: list[dict[str, Any]] = []  # no live worker must pick these up
    monkeypatch.setattr(render_video, "apply_async", lambda *a, **k: sent.append(k))
    node = beat(fake_registry, "gpu1", warm=[video_session.avatar_id])
    message = make_reply(video_session, speak("Queued."))
    events = EventListener(video_session.id)
    try:
        ticket = submit_render(message.pk)
        queued = events.until("video_queued", timeout=10)
    finally:
        events.close()
    assert ticket.queue == worker_queue(node) and ticket.position == 0
    assert queued == {
        "type": "video_queued",
        "task_id": ticket.task_id,
        "message_id": message.pk,
        "position": 0,
    }
    assert sent[0]["queue"] == worker_queue(node) and sent[0]["task_id"] == ticket.task_id
    assert 0 < sent[0]["soft_time_limit"] < sent[0]["time_limit"]
    message.refresh_from_db()
    assert message.render_task_id == ticket.task_id
    # the next one sees the claim before the worker's next heartbeat
    assert submit_render(make_reply(video_session, speak("Next.")).pk).queue == RENDER_QUEUE
    assert sent[1]["queue"] == RENDER_QUEUE


def test_time_limits_grow_with_the_audio() -> None:
    from rendering.scheduler import time_limits

    short, long = time_limits(2.0), time_limits(30.0)
    assert short[0] < long[0] and short[1] > short[0] and long[1] > long[0]


def test_heartbeat_publishes_state_with_a_ttl(fake_registry: Any) -> None:
    hb = heartbeat.Heartbeat("hb@test", concurrency=2)
    hb.beat()
    (worker,) = coordination.read_workers()
    assert worker["nodename"] == "hb@test" and worker["state"] == "idle"
    assert worker["backlog"] == 0 and worker["concurrency"] == 2 and worker["alive"]
    assert {"host", "current_task", "warm_avatars", "device"} <= set(worker)
    assert (
        0
        < fake_registry.pttl(coordination.worker_key("hb@test"))
        <= coordination.stale_after_s() * 1000
    )


def test_tasks_of_a_dead_worker_move_to_the_shared_queue(fake_registry: Any) -> None:
    dead = beat(fake_registry, "dead", age=60, tasks=["t-running"])
    fake_registry.delete(coordination.worker_key(dead))
    own = worker_queue(dead)
    payload = {"body": "", "headers": {"id": "t-waiting"}, "properties": {}}
    fake_registry.lpush(own, json.dumps(payload))
    running = {"body": "", "headers": {"id": "t-running"}, "properties": {}}
    fake_registry.hset(heartbeat.UNACKED, "tag1", json.dumps([running, "render", "render"]))
    fake_registry.zadd(heartbeat.UNACKED_INDEX, {"tag1": time.time() - 65})
    # the same task delivered again after the worker died belongs to a live worker
    fake_registry.hset(heartbeat.UNACKED, "tag2", json.dumps([running, "render", "render"]))
    fake_registry.zadd(heartbeat.UNACKED_INDEX, {"tag2": time.time()})
    try:
        heartbeat.rescue_dead_workers()
        assert fake_registry.llen(own) == 0
        moved = [json.loads(m) for m in fake_registry.lrange(RENDER_QUEUE, 0, -1)]
        assert sorted(m["headers"]["id"] for m in moved) == ["t-running", "t-waiting"]
        assert all(m["properties"]["delivery_info"]["routing_key"] == "render" for m in moved)
        assert not fake_registry.hexists(heartbeat.UNACKED, "tag1")
        assert fake_registry.hexists(heartbeat.UNACKED, "tag2")
    finally:
        fake_registry.delete(RENDER_QUEUE, heartbeat.UNACKED, heartbeat.UNACKED_INDEX)


def test_render_workers_command_lists_workers_and_state(fake_registry: Any, capsys: Any) -> None:
    beat(fake_registry, "gpu1", backlog=1, tasks=["task-123"], warm=[4])
    beat(fake_registry, "gpu2", age=60)
    call_command("render_workers")
    out = capsys.readouterr().out
    assert "gpu1@gpu" in out and "busy" in out and "task-123" in out and "gpu2" not in out
    call_command("render_workers", "--all")
    assert "dead" in capsys.readouterr().out


def test_check_renderer_names_what_echomimic_lacks(settings: Any, tmp_path: Any) -> None:
    settings.RENDER_BACKEND = "echomimic"
    settings.ECHOMIMIC_DIR = str(tmp_path / "echomimic")
    settings.ECHOMIMIC_WEIGHTS_DIR = str(tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "face_locator.pth").write_bytes(b"x")
    with pytest.raises(CommandError) as info:
        call_command("check_renderer")
    line = str(info.value)
    assert "\n" not in line and "pipeline_echo_mimic_acc.py" in line
    assert "denoising_unet_acc.pth" in line and "face_locator.pth" not in line
    settings.RENDER_BACKEND = "lite"
    call_command("check_renderer")


def test_echomimic_backend_refuses_to_start_without_its_install(settings: Any) -> None:
    from rendering.backends.base import RenderError
    from rendering.backends.echomimic import EchoMimicBackend

    settings.ECHOMIMIC_DIR = ""
    with pytest.raises(RenderError) as info:
        EchoMimicBackend()
    assert "ECHOMIMIC_DIR is not set" in info.value.message


def test_avatars_being_prepared_are_not_counted_as_videos_waiting(
    fake_registry: Any, settings: Any
) -> None:
    """Saving avatars sends each render worker one preparation per avatar on its own queue:
    however many there are, a reply's video is not refused as busy because of them."""
    from rendering.tasks import prepare_avatar, render_video

    node = beat(fake_registry, "preparing")
    own = worker_queue(node)
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for avatar_id in range(settings.RENDER_MAX_BACKLOG + 2):  # real messages, as sent
        prepare_avatar.apply_async((avatar_id,), queue=own)
    render_video.apply_async((1,), queue=own)
    sent = broker.lrange(own, 0, -1)
    broker.delete(own)  # nobody consumes it there; the fake registry holds the copies
    assert len(sent) == settings.RENDER_MAX_BACKLOG + 3
    fake_registry.rpush(own, *sent)

    (load,) = worker_loads(avatar_id=1)
    assert load.load == 1  # the one render, not the preparations
    assert choose([load], 0) == (RENDER_QUEUE, 1)  # waits for the worker; not ERR_BUSY


def test_processes_with_other_heartbeat_intervals_agree_on_when_a_worker_died(
    fake_registry: Any, settings: Any
) -> None:
    """The dead worker beat every 0.5 s (dead after 5 s); its render was rescued and the new
    delivery went to a live worker 6 s after its last beat. A rescuer whose own interval is
    10 s must not take that delivery for the dead worker's too and hand it out again."""
    settings.RENDER_HEARTBEAT_S = 0.5
    node = beat(fake_registry, "gone", age=8.0, tasks=["render-1"])
    fake_registry.delete(coordination.worker_key(node))  # its key expired with its last beat
    last = json.loads(fake_registry.get(coordination.last_key(node)))
    last["stale_after_s"] = 5.0  # as its heartbeat announced
    fake_registry.set(coordination.last_key(node), json.dumps(last))
    payload = {"headers": {"id": "render-1"}, "properties": {"delivery_info": {}}}
    fake_registry.hset(heartbeat.UNACKED, "tag-live", json.dumps([payload, "render", "render"]))
    fake_registry.zadd(heartbeat.UNACKED_INDEX, {"tag-live": last["ts"] + 6.0})

    settings.RENDER_HEARTBEAT_S = 10.0  # the rescuer's own: dead after 30 s
    heartbeat.rescue_dead_workers()
    assert fake_registry.hexists(heartbeat.UNACKED, "tag-live")  # the live delivery stays
    assert not fake_registry.llen(RENDER_QUEUE)
    (dead,) = coordination.read_workers(include_stale=True)
    assert not dead["alive"]
