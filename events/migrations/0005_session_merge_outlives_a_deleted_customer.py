"""A session merge outlives a customer deleted other than by an erasure (its customer set null): the session's later
merges still begin where it ended (privacy export)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0005_item_created_ties_by_id'),
        ('events', '0004_session_merge'),
    ]

    operations = [
        migrations.AlterField(
            model_name='sessionmerge',
            name='customer',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='catalog.customer'),
        ),
    ]
