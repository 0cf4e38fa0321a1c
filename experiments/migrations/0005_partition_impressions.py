"""Impressions partitioned by month on served_at (declarative range partitioning), existing rows kept.

The uniqueness that makes a replayed flush harmless gains the partition key: (request_id, experiment, served_at);
a replayed batch carries the same served_at, so it still stores nothing twice. The primary key becomes
(id, served_at) in the database; Django's state keeps ``id`` (one identity sequence: unique across partitions).
Nothing references this table by foreign key.
"""

from django.db import migrations, models

from events import partitions

_UNIQUE = {"impression_request_experiment": "impression_request_experiment_time"}


def _forward(apps, schema_editor) -> None:  # noqa: ANN001 - Django's RunPython signature
    partitions.table_partition(spec=partitions.IMPRESSIONS, unique=_UNIQUE, conn=schema_editor.connection)


def _backward(apps, schema_editor) -> None:  # noqa: ANN001
    partitions.table_unpartition(spec=partitions.IMPRESSIONS, unique=_UNIQUE, conn=schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("experiments", "0004_namespaces_replace_layers"), ("events", "0002_partition_interactions")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(_forward, _backward)],
            state_operations=[
                migrations.RemoveConstraint(model_name="impression", name="impression_request_experiment"),
                migrations.AddConstraint(
                    model_name="impression",
                    constraint=models.UniqueConstraint(
                        fields=("request_id", "experiment", "served_at"),
                        nulls_distinct=False,
                        name="impression_request_experiment_time",
                    ),
                ),
            ],
        )
    ]
