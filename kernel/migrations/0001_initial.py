# The model moved here from recsys/ with its table (db_table): state only, the table is not touched.

import django.contrib.postgres.fields
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _content_type_follows(apps, schema_editor):  # noqa: ANN001, ARG001
    """Admin permissions and change-log entries point at the content type: rename it rather than orphan it."""
    content_type = apps.get_model("contenttypes", "ContentType")
    if not content_type.objects.filter(app_label="kernel", model="apikey").exists():
        content_type.objects.filter(app_label="recsys", model="apikey").update(app_label="kernel")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('recsys', '0004_erased_customer'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ApiKey',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(help_text="Who uses this key, e.g. 'storefront production'.", max_length=100)),
                        ('prefix', models.CharField(editable=False, help_text='Identifies the key in logs.', max_length=16, unique=True)),
                        ('key_hash', models.CharField(editable=False, max_length=64, unique=True)),
                        ('scopes', django.contrib.postgres.fields.ArrayField(base_field=models.CharField(choices=[('recommend', 'recommend: read recommendations'), ('events', 'events: send interaction events'), ('catalog', 'catalog: read and write items and customers'), ('admin', 'admin: everything, plus debug traces and forced variants')], max_length=16), default=list, size=None)),
                        ('rate_per_minute', models.PositiveIntegerField(blank=True, help_text='Requests per minute; empty uses the server default.', null=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('last_used_at', models.DateTimeField(blank=True, editable=False, null=True)),
                        ('revoked_at', models.DateTimeField(blank=True, null=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'verbose_name': 'API key',
                        'db_table': 'recsys_apikey',
                        'constraints': [models.CheckConstraint(condition=models.Q(('scopes__contained_by', ['recommend', 'events', 'catalog', 'admin'])), name='apikey_scopes_known')],
                    },
                ),
            ],
        ),
        migrations.RunPython(_content_type_follows, migrations.RunPython.noop),
    ]
