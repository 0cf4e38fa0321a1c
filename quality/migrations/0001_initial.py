# The model moved here from recsys/ with its table (db_table): state only, the table is not touched.

from django.db import migrations, models


def _content_type_follows(apps, schema_editor):  # noqa: ANN001, ARG001
    """Admin permissions and change-log entries point at the content type: rename it rather than orphan it."""
    content_type = apps.get_model("contenttypes", "ContentType")
    if not content_type.objects.filter(app_label="quality", model="qualitysnapshot").exists():
        content_type.objects.filter(app_label="recsys", model="qualitysnapshot").update(app_label="quality")


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
                    name='QualitySnapshot',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('date', models.DateField(unique=True)),
                        ('impressions', models.PositiveBigIntegerField(default=0, help_text='Recommendation lists served.')),
                        ('clicks', models.PositiveBigIntegerField(default=0, help_text='Lists with at least one attributed click.')),
                        ('conversions', models.PositiveBigIntegerField(default=0, help_text='Lists with at least one attributed purchase.')),
                        ('ctr', models.FloatField(blank=True, help_text='clicks / impressions', null=True)),
                        ('conversion_rate', models.FloatField(blank=True, help_text='conversions / impressions', null=True)),
                        ('active_items', models.PositiveIntegerField(blank=True, null=True)),
                        ('coverage_24h', models.FloatField(blank=True, help_text='Distinct active items shown that day / active items.', null=True)),
                        ('coverage_7d', models.FloatField(blank=True, help_text='Distinct active items shown in the 7 days up to then / active items.', null=True)),
                        ('max_category_share', models.FloatField(blank=True, help_text='Mean share of the most frequent category per list (lower = more diverse).', null=True)),
                        ('latency_p95_ms', models.FloatField(blank=True, help_text='From the Prometheus multi-process files (PROMETHEUS_MULTIPROC_DIR); empty where not available.', null=True)),
                        ('by_surface', models.JSONField(blank=True, default=list, help_text='Per surface, experiment and variant: impressions, clicks, conversions.')),
                        ('computed_at', models.DateTimeField()),
                    ],
                    options={
                        'verbose_name_plural': 'quality dashboard',
                        'db_table': 'recsys_qualitysnapshot',
                        'ordering': ('-date',),
                        'constraints': [models.CheckConstraint(condition=models.Q(('ctr__isnull', True), ('ctr__range', (0, 1)), _connector='OR'), name='quality_ctr_in_range'), models.CheckConstraint(condition=models.Q(('conversion_rate__isnull', True), ('conversion_rate__range', (0, 1)), _connector='OR'), name='quality_conversion_rate_in_range'), models.CheckConstraint(condition=models.Q(('coverage_24h__isnull', True), ('coverage_24h__range', (0, 1)), _connector='OR'), name='quality_coverage_24h_in_range'), models.CheckConstraint(condition=models.Q(('coverage_7d__isnull', True), ('coverage_7d__range', (0, 1)), _connector='OR'), name='quality_coverage_7d_in_range'), models.CheckConstraint(condition=models.Q(('clicks__lte', models.F('impressions')), ('conversions__lte', models.F('impressions'))), name='quality_outcomes_within_impressions')],
                    },
                ),
            ],
        ),
        migrations.RunPython(_content_type_follows, migrations.RunPython.noop),
    ]
