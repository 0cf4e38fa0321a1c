# ApiKey, QualitySnapshot, ErasureRecord and ErasedCustomer moved to kernel, quality, privacy and catalog with their
# tables (db_table): this app forgets them, state only, after the new apps took them over.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('kernel', '0001_initial'),
        ('privacy', '0001_initial'),
        ('quality', '0001_initial'),
        ('catalog', '0004_erasedcustomer'),
        ('recsys', '0004_erased_customer'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name='apikey',
                    name='created_by',
                ),
                migrations.DeleteModel(
                    name='ErasedCustomer',
                ),
                migrations.DeleteModel(
                    name='ErasureRecord',
                ),
                migrations.DeleteModel(
                    name='QualitySnapshot',
                ),
                migrations.DeleteModel(
                    name='ApiKey',
                ),
            ],
        ),
    ]
