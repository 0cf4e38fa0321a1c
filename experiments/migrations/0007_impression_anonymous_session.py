"""The anonymous impressions of a session, by time: what a session merge gave a customer (events.SessionMerge), read
by the privacy export and erasure. Partial (anonymous lists with a session only). Created on the partitioned parent,
so every monthly partition, present and future, has it; the build locks the table's writes (the impression flush
waits), once.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0005_item_created_ties_by_id'),
        ('experiments', '0006_mde_range'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='impression',
            index=models.Index(condition=models.Q(('customer__isnull', True), models.Q(('session_id', ''), _negated=True)), fields=['session_id', 'served_at'], name='impression_anon_session'),
        ),
    ]
