"""`Message.ref`: the client's id of a user turn, kept with the message so that the turn's
Celery tasks take ids only (Flower shows their arguments) and still send the ref back."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("chat", "0004_message_task_ids")]

    operations = [
        migrations.AddField(
            model_name="message",
            name="ref",
            field=models.CharField(blank=True, max_length=64),
        ),
    ]
