"""Data migrations, run forwards on rows written by the schema before them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

AVATARS = ("avatars", "0003_avatar_voice")
BEFORE = [("chat", "0003_session_user"), AVATARS]
AFTER = [("chat", "0004_message_task_ids"), AVATARS]


@pytest.mark.django_db(transaction=True)
def test_the_message_task_id_becomes_the_turn_or_the_render_task() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    avatar = old.get_model("avatars", "Avatar").objects.create(slug="m", name="M")
    session = old.get_model("chat", "ChatSession").objects.create(avatar=avatar, mode="video")
    Message = old.get_model("chat", "Message")
    user = Message.objects.create(session=session, role="user", task_id="turn-1")
    reply = Message.objects.create(session=session, role="assistant", task_id="render-1")
    quiet = Message.objects.create(session=session, role="assistant")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("chat", "Message")
    got = {
        m.pk: (m.turn_task_id, m.render_task_id)
        for m in new.objects.filter(pk__in=[user.pk, reply.pk, quiet.pk])
    }
    assert got == {user.pk: ("turn-1", ""), reply.pk: ("", "render-1"), quiet.pk: ("", "")}

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(BEFORE)  # and back: one field again
    back = executor.loader.project_state(BEFORE).apps.get_model("chat", "Message")
    assert sorted(back.objects.values_list("task_id", flat=True)) == ["", "render-1", "turn-1"]
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
