# The model moved here from recsys/ with its table (db_table): state only, the table is not touched.

from django.db import migrations, models


def _content_type_follows(apps, schema_editor):  # noqa: ANN001, ARG001
    """Admin permissions and change-log entries point at the content type: rename it rather than orphan it."""
    content_type = apps.get_model("contenttypes", "ContentType")
    if not content_type.objects.filter(app_label="privacy", model="erasurerecord").exists():
        content_type.objects.filter(app_label="recsys", model="erasurerecord").update(app_label="privacy")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('recsys', '0004_erased_customer'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ErasureRecord',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('erased_at', models.DateTimeField(db_index=True)),
                        ('requested_by_key_prefix', models.CharField(blank=True, default='', help_text='The API key that asked for it (its prefix), if any.', max_length=16)),
                        ('interactions_deleted', models.PositiveIntegerField(default=0)),
                        ('impressions_deleted', models.PositiveIntegerField(default=0)),
                        ('online_keys_deleted', models.PositiveIntegerField(default=0, help_text='History and affinity keys in Redis.')),
                        ('cached_lists_deleted', models.PositiveIntegerField(default=0)),
                    ],
                    options={
                        'db_table': 'recsys_erasurerecord',
                        'ordering': ('-erased_at',),
                    },
                ),
            ],
        ),
        migrations.RunPython(_content_type_follows, migrations.RunPython.noop),
    ]
