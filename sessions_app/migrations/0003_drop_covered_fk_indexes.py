"""Drop the foreign keys' own indexes where a unique constraint (or chat_session_recent) already
leads with the column: they served no query the other index does not, and every chat turn wrote
the message's twice.

On the database only `DROP INDEX`: Django's own AlterField would copy each whole table on SQLite.
The names are the ones Django gave these indexes on every backend."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

# (index, table, column)
COVERED = [
    ("sessions_app_chatmessage_session_id_34412ed7", "sessions_app_chatmessage", "session_id"),
    ("sessions_app_chatsession_owner_id_e76090b8", "sessions_app_chatsession", "owner_id"),
    ("sessions_app_sinkreceipt_state_id_002d8411", "sessions_app_sinkreceipt", "state_id"),
    ("sessions_app_sinkstate_session_id_855ec488", "sessions_app_sinkstate", "session_id"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0002_sinks"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{index}"',
                    reverse_sql=f'CREATE INDEX "{index}" ON "{table}" ("{column}")',
                )
                for index, table, column in COVERED
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="chatmessage",
                    name="session",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="messages",
                        to="sessions_app.chatsession",
                    ),
                ),
                migrations.AlterField(
                    model_name="chatsession",
                    name="owner",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="chat_sessions",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="sinkreceipt",
                    name="state",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="receipts",
                        to="sessions_app.sinkstate",
                    ),
                ),
                migrations.AlterField(
                    model_name="sinkstate",
                    name="session",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="sink_states",
                        to="sessions_app.chatsession",
                    ),
                ),
            ],
        )
    ]
