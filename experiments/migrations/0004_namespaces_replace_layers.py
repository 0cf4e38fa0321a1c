"""Namespaces replace layers: the running experiments of a surface never share a unit.

Layers let a customer be in one experiment of every layer at once; GrowthBook namespaces make experiments mutually
exclusive instead (disjoint ranges of one namespace). Two exclusion constraints (btree_gist) keep it so. Existing
drafts and finished experiments simply lose their layer (it decided nothing about their past assignment, which
their impressions record). A surface with several running experiments (one per layer) keeps the one in the default
layer, or else the one started first; the others are stopped here, as a merchandiser would have to, with a warning.
"""

import logging

import django.contrib.postgres.fields.ranges
import django.db.models.functions.comparison
from django.conf import settings
from django.contrib.postgres.operations import BtreeGistExtension
from django.db import migrations, models
from django.utils import timezone

import experiments.models

logger = logging.getLogger(__name__)


def stop_overlapping_layers(apps, schema_editor):
    Experiment = apps.get_model("experiments", "Experiment")
    running = Experiment.objects.filter(status="running").order_by("surface", "start_at", "pk")
    kept: dict[str, object] = {}
    for experiment in sorted(running, key=lambda e: (e.surface, e.layer is not None, e.start_at, e.pk)):
        if experiment.surface not in kept:
            kept[experiment.surface] = experiment
            continue
        Experiment.objects.filter(pk=experiment.pk).update(status="stopped", end_at=timezone.now())
        logger.warning(
            "experiment_stopped_by_migration",
            extra={"experiment": experiment.key, "surface": experiment.surface, "layer": experiment.layer},
        )
        print(  # noqa: T201 (shown in the migrate output, where the operator looks)
            f"  Stopped {experiment.key} (layer {experiment.layer} on {experiment.surface}): layers no longer "
            f"overlap; {kept[experiment.surface].key} keeps running. Restart it in a namespace if needed."
        )


class Migration(migrations.Migration):
    dependencies = [
        ("experiments", "0003_impression_latency"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        BtreeGistExtension(),
        migrations.AddField(
            model_name="experiment",
            name="namespace",
            field=models.SlugField(
                blank=True,
                help_text="Mutually exclusive experiments on one surface: give them the same namespace and disjoint ranges [start, end) of it. Leave empty for an experiment that takes the whole surface.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="experiment",
            name="namespace_end",
            field=models.FloatField(blank=True, help_text="End of the namespace range (excluded), 0..1.", null=True),
        ),
        migrations.AddField(
            model_name="experiment",
            name="namespace_start",
            field=models.FloatField(blank=True, help_text="Start of the namespace range, 0..1.", null=True),
        ),
        migrations.RunPython(stop_overlapping_layers, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name="experiment",
            name="experiment_one_running_per_surface_layer",
        ),
        migrations.RemoveConstraint(
            model_name="experiment",
            name="experiment_layer_not_empty",
        ),
        migrations.RemoveField(
            model_name="experiment",
            name="layer",
        ),
        migrations.AddConstraint(
            model_name="experiment",
            constraint=experiments.models.RunningExclusionConstraint(
                condition=models.Q(("status", "running")),
                expressions=[
                    (models.F("surface"), "="),
                    (django.db.models.functions.comparison.Coalesce("namespace", models.Value("")), "<>"),
                ],
                name="experiment_running_one_namespace_per_surface",
            ),
        ),
        migrations.AddConstraint(
            model_name="experiment",
            constraint=experiments.models.RunningExclusionConstraint(
                condition=models.Q(("status", "running")),
                expressions=[
                    (models.F("surface"), "="),
                    (django.db.models.functions.comparison.Coalesce("namespace", models.Value("")), "="),
                    (
                        models.Func(
                            django.db.models.functions.comparison.Cast(
                                django.db.models.functions.comparison.Coalesce("namespace_start", models.Value(0.0)),
                                models.DecimalField(decimal_places=10, max_digits=12),
                            ),
                            django.db.models.functions.comparison.Cast(
                                django.db.models.functions.comparison.Coalesce("namespace_end", models.Value(1.0)),
                                models.DecimalField(decimal_places=10, max_digits=12),
                            ),
                            models.Value("[)"),
                            function="numrange",
                            output_field=django.contrib.postgres.fields.ranges.DecimalRangeField(),
                        ),
                        "&&",
                    ),
                ],
                name="experiment_running_namespace_ranges_disjoint",
            ),
        ),
        migrations.AddConstraint(
            model_name="experiment",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("namespace__isnull", True), ("namespace_end__isnull", True), ("namespace_start__isnull", True)
                    ),
                    models.Q(
                        ("namespace__isnull", False),
                        ("namespace_end__isnull", False),
                        ("namespace_end__lte", 1),
                        ("namespace_start__gte", 0),
                        ("namespace_start__isnull", False),
                        ("namespace_start__lt", models.F("namespace_end")),
                    ),
                    _connector="OR",
                ),
                name="experiment_namespace_range_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="experiment",
            constraint=models.CheckConstraint(
                condition=models.Q(("namespace", ""), _negated=True), name="experiment_namespace_not_empty"
            ),
        ),
    ]
