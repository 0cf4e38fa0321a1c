# The model moved here from recsys/ with its table (db_table): state only, the table is not touched.

from django.db import migrations, models


def _content_type_follows(apps, schema_editor):  # noqa: ANN001, ARG001
    """Admin permissions and change-log entries point at the content type: rename it rather than orphan it."""
    content_type = apps.get_model("contenttypes", "ContentType")
    if not content_type.objects.filter(app_label="catalog", model="erasedcustomer").exists():
        content_type.objects.filter(app_label="recsys", model="erasedcustomer").update(app_label="catalog")


class Migration(migrations.Migration):

    dependencies = [
        ('recsys', '0004_erased_customer'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('catalog', '0003_item_updated_index'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ErasedCustomer',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('id_hash', models.CharField(editable=False, max_length=64, unique=True)),
                        ('erased_at', models.DateTimeField()),
                    ],
                    options={
                        'verbose_name': 'erased customer id',
                        'db_table': 'recsys_erasedcustomer',
                    },
                ),
            ],
        ),
        migrations.RunPython(_content_type_follows, migrations.RunPython.noop),
    ]
