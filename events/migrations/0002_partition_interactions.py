"""Interactions partitioned by month on occurred_at (declarative range partitioning), existing rows kept.

Postgres requires the partition key in every unique constraint of a partitioned table, so the idempotency key
becomes (event_id, occurred_at) and the primary key (id, occurred_at) in the database. Django's state keeps ``id``
as the primary key: ids come from one identity sequence, so they stay unique across partitions, and the ORM,
the admin and every ``interaction_pk`` keep working. Nothing references this table by foreign key.
"""

from django.db import migrations, models

from events import partitions

_UNIQUE = {"interaction_event_id_unique": "interaction_event_time_unique"}


def _forward(apps, schema_editor) -> None:  # noqa: ANN001 - Django's RunPython signature
    partitions.table_partition(spec=partitions.INTERACTIONS, unique=_UNIQUE, conn=schema_editor.connection)


def _backward(apps, schema_editor) -> None:  # noqa: ANN001
    partitions.table_unpartition(spec=partitions.INTERACTIONS, unique=_UNIQUE, conn=schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("events", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(_forward, _backward)],
            state_operations=[
                migrations.RemoveConstraint(model_name="interaction", name="interaction_event_id_unique"),
                migrations.AddConstraint(
                    model_name="interaction",
                    constraint=models.UniqueConstraint(
                        fields=("event_id", "occurred_at"), name="interaction_event_time_unique"
                    ),
                ),
            ],
        )
    ]
