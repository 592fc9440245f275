"""`Message.task_id` meant the upload turn's task on user rows and the render's task on
assistant rows: two fields, each with one meaning."""

from django.db import migrations, models


def split(apps, schema_editor):
    Message = apps.get_model("chat", "Message")
    assistant = Message.objects.filter(role="assistant").exclude(task_id="")
    assistant.update(render_task_id=models.F("task_id"), task_id="")


def join(apps, schema_editor):
    Message = apps.get_model("chat", "Message")
    Message.objects.exclude(render_task_id="").update(task_id=models.F("render_task_id"))


class Migration(migrations.Migration):
    dependencies = [("chat", "0003_session_user")]

    operations = [
        migrations.AddField(
            model_name="message",
            name="render_task_id",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.RunPython(split, join),
        migrations.RenameField(model_name="message", old_name="task_id", new_name="turn_task_id"),
    ]
