"""Impressions keep the pseudonymous unit of the customer id their list was assigned by (experiments.units): the
lists of a customer stored before their row existed are then one unit of the results, and an erasure and an export
find them.

Cheap on a big table. The column is nullable without a default: Postgres only records it in the catalog (no rewrite,
one short lock of the table and its partitions); rows stored before keep null and the results count them as they
did. The partial index (customerless rows with a unit: few) is built partition by partition ``CONCURRENTLY`` and
attached to an index on the parent (events.partitions.index_create_concurrently), so the impression flush is never
blocked by a build; hence a non-atomic migration.
"""

from django.db import migrations, models

from events import partitions

_NAME = "impression_customer_unit"
# As Django renders the model's index condition, so the state and the database agree.
_DEFINITION = '("customer_unit") WHERE ("customer_id" IS NULL AND "customer_unit" IS NOT NULL)'


def _forward(apps, schema_editor) -> None:  # noqa: ANN001 - Django's RunPython signature
    partitions.index_create_concurrently(
        spec=partitions.IMPRESSIONS, name=_NAME, definition=_DEFINITION, conn=schema_editor.connection
    )


def _backward(apps, schema_editor) -> None:  # noqa: ANN001
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX IF EXISTS "{_NAME}"')  # the partitions' with it


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("experiments", "0008_variant_weight_minimum")]

    operations = [
        migrations.AddField(
            model_name="impression", name="customer_unit", field=models.UUIDField(blank=True, null=True)
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(_forward, _backward)],
            state_operations=[
                migrations.AddIndex(
                    model_name="impression",
                    index=models.Index(
                        condition=models.Q(("customer__isnull", True), ("customer_unit__isnull", False)),
                        fields=["customer_unit"],
                        name=_NAME,
                    ),
                )
            ],
        ),
    ]
