"""Tasks are routed to the right queue and run by a real worker."""

from __future__ import annotations

from celery_app import app, worker_queue
from rendering.tasks import worker_info
from tests.procs import Proc


def test_routes_by_task_module() -> None:
    router = app.amqp.router
    assert router.route({}, "rendering.tasks.worker_info")["queue"].name == "render"
    assert router.route({}, "chat.tasks.anything")["queue"].name == "speech"


def test_render_task_runs_on_a_render_worker(celery_worker: Proc) -> None:
    info = worker_info.delay().get(timeout=30)
    assert info["hostname"] == celery_worker.nodename
    assert info["routing_key"] == "render"
    assert info["torch"].startswith("2.")


def test_render_worker_consumes_its_own_queue(celery_worker: Proc) -> None:
    own = worker_queue(celery_worker.nodename)
    queues = app.control.inspect(destination=[celery_worker.nodename], timeout=2).active_queues()
    assert own in {q["name"] for q in queues[celery_worker.nodename]}
    info = worker_info.apply_async(queue=own).get(timeout=30)
    assert info["routing_key"] == own


def test_reliability_settings() -> None:
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert app.conf.task_time_limit > app.conf.task_soft_time_limit
