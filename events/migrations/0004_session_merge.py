"""Session merges recorded: whose the anonymous impressions of a merged session are (privacy export and erasure)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0005_item_created_ties_by_id'),
        ('events', '0003_interaction_dismiss'),
    ]

    operations = [
        migrations.CreateModel(
            name='SessionMerge',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('session_id', models.CharField(max_length=100)),
                ('merged_at', models.DateTimeField()),
                ('customer', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='catalog.customer')),
            ],
            options={
                'indexes': [models.Index(fields=['session_id', 'merged_at'], name='sessionmerge_session_time')],
            },
        ),
    ]
