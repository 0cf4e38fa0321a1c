"""Experiments, their variants, each surface's default serving config, impressions and bandit weight history.

Invariants the database keeps (see the migrations): the running experiments of a surface never share a unit (one
experiment, or several in disjoint ranges of one namespace: two exclusion constraints); one control per experiment;
weights in [0, 1], each 0 or at least 1% (for rows written since migration 0008); and, by a deferred constraint
trigger, the weights of a running experiment sum to 1 with exactly one control at every commit.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import ArrayField, DecimalRangeField, RangeOperators
from django.contrib.postgres.indexes import BrinIndex
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import DEFAULT_DB_ALIAS, models
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from catalog.models import Customer
from experiments.validation import MDE_MAX, MDE_MIN, MIN_WEIGHT

# The tolerance of the weight-sum check, in the service, the admin form and the database trigger alike.
WEIGHT_SUM_TOLERANCE = 1e-6


class RunningExclusionConstraint(ExclusionConstraint):
    """An exclusion constraint over running experiments.

    Django's model validation cannot evaluate the ``status = 'running'`` condition when the form leaves ``status``
    out (it is not editable: only the lifecycle services change it), so it skips the check then; the database still
    enforces it, and ``experiment_start`` checks first for a readable message.
    """

    def validate(self, model: Any, instance: Any, exclude: Any = None, using: str = DEFAULT_DB_ALIAS) -> None:
        if exclude and "status" in exclude:
            return
        super().validate(model, instance, exclude=exclude, using=using)


def namespace_range() -> models.Func:
    """``numrange(start, end, '[)')`` of an experiment's namespace range; [0, 1) without a namespace.

    numeric because Postgres has no built-in float8 range type; ten decimals are far finer than any split a
    merchandiser enters (the hash itself has three).
    """
    numeric = models.DecimalField(max_digits=12, decimal_places=10)
    return models.Func(
        Cast(Coalesce("namespace_start", models.Value(0.0)), numeric),
        Cast(Coalesce("namespace_end", models.Value(1.0)), numeric),
        models.Value("[)"),
        function="numrange",
        output_field=DecimalRangeField(),
    )


class Experiment(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "draft"
        RUNNING = "running", "running"
        STOPPED = "stopped", "stopped"
        CONCLUDED = "concluded", "concluded"

    class Mode(models.TextChoices):
        AB = "ab", "A/B test (fixed weights)"
        BANDIT = "bandit", "bandit (weights follow the primary metric)"

    class Metric(models.TextChoices):
        CTR = "ctr", "click-through rate (clicked lists / lists shown)"
        ADD_TO_CART_RATE = "add_to_cart_rate", "add-to-cart rate (per exposed customer)"
        CONVERSION_RATE = "conversion_rate", "conversion rate (per exposed customer)"
        REVENUE_PER_CUSTOMER = "revenue_per_customer", "revenue per exposed customer"

    key = models.SlugField(max_length=64, unique=True, help_text="Stable id used in logs, the API and the hash.")
    name = models.CharField(max_length=200)
    hypothesis = models.TextField(blank=True, default="", help_text="What you expect to change, and why.")
    surface = models.SlugField(max_length=50, help_text='Where the list is shown, e.g. "home", "item", "cart".')
    # GrowthBook namespaces: experiments of one surface run at the same time only in disjoint ranges of one
    # namespace, so no unit is in two of them (experiments.hashing.in_namespace).
    namespace = models.SlugField(
        max_length=50,
        null=True,
        blank=True,
        help_text="Mutually exclusive experiments on one surface: give them the same namespace and disjoint ranges "
        "[start, end) of it. Leave empty for an experiment that takes the whole surface.",
    )
    namespace_start = models.FloatField(null=True, blank=True, help_text="Start of the namespace range, 0..1.")
    namespace_end = models.FloatField(null=True, blank=True, help_text="End of the namespace range (excluded), 0..1.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, editable=False)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.AB)
    hash_seed = models.CharField(
        max_length=100, blank=True, default="", help_text="Assignment seed; empty uses the key. Never change it live."
    )
    primary_metric = models.CharField(max_length=32, choices=Metric.choices, default=Metric.CONVERSION_RATE)
    guardrails = models.JSONField(
        default=dict,
        blank=True,
        help_text='Simple thresholds, e.g. {"coverage": 0.5, "latency_p95_ms": 50}: coverage is a minimum share of '
        "active items shown, latency a maximum.",
    )
    minimum_detectable_effect = models.FloatField(
        default=0.05,
        validators=[MinValueValidator(MDE_MIN), MaxValueValidator(MDE_MAX)],
        help_text="Smallest relative lift worth detecting (0.05 = 5%; 0.001 to 10); sizes the experiment.",
    )
    attribution_window_hours = models.PositiveIntegerField(
        default=24, help_text="Purchases of a recommended item this long after it was shown count for the variant."
    )
    start_at = models.DateTimeField(null=True, blank=True, editable=False)
    end_at = models.DateTimeField(null=True, blank=True, editable=False)
    winner = models.ForeignKey(
        "Variant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            # Running experiments of a surface are mutually exclusive. No namespace counts as namespace "" over the
            # whole of [0, 1), so it collides with any other running experiment on the surface. Two running
            # experiments on a surface must share a namespace (btree_gist's <>) ...
            RunningExclusionConstraint(
                name="experiment_running_one_namespace_per_surface",
                expressions=[
                    (models.F("surface"), RangeOperators.EQUAL),
                    (Coalesce("namespace", models.Value("")), RangeOperators.NOT_EQUAL),
                ],
                condition=models.Q(status="running"),
            ),
            # ... and take disjoint ranges of it.
            RunningExclusionConstraint(
                name="experiment_running_namespace_ranges_disjoint",
                expressions=[
                    (models.F("surface"), RangeOperators.EQUAL),
                    (Coalesce("namespace", models.Value("")), RangeOperators.EQUAL),
                    (namespace_range(), RangeOperators.OVERLAPS),
                ],
                condition=models.Q(status="running"),
            ),
            # A namespace comes with a non-empty range inside [0, 1]; no namespace, no range.
            models.CheckConstraint(
                condition=(
                    models.Q(namespace__isnull=True, namespace_start__isnull=True, namespace_end__isnull=True)
                    | models.Q(
                        # Explicit: a CHECK passes on NULL, so "start >= 0" alone would let a NULL start through.
                        namespace__isnull=False,
                        namespace_start__isnull=False,
                        namespace_end__isnull=False,
                        namespace_start__gte=0,
                        namespace_start__lt=models.F("namespace_end"),
                        namespace_end__lte=1,
                    )
                ),
                name="experiment_namespace_range_valid",
            ),
            # One spelling of "no namespace", so the constraints above cannot be dodged with "".
            models.CheckConstraint(condition=~models.Q(namespace=""), name="experiment_namespace_not_empty"),
            models.CheckConstraint(condition=models.Q(minimum_detectable_effect__gt=0), name="experiment_mde_positive"),
            models.CheckConstraint(
                condition=models.Q(attribution_window_hours__gte=1, attribution_window_hours__lte=24 * 30),
                name="experiment_attribution_window_range",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="running") | models.Q(start_at__isnull=False),
                name="experiment_running_has_start",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"

    @property
    def seed(self) -> str:
        return self.hash_seed or self.key

    @property
    def namespace_spec(self) -> tuple[str, float, float] | None:
        """GrowthBook's ``namespace: [id, start, end]``, or None for an experiment that takes the whole surface."""
        if self.namespace is None or self.namespace_start is None or self.namespace_end is None:
            return None
        return (self.namespace, self.namespace_start, self.namespace_end)


class Variant(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    name = models.SlugField(max_length=50)
    weight = models.FloatField(help_text="Share of the experiment's traffic, 0..1; the weights must sum to 1.")
    is_control = models.BooleanField(default=False)
    config = models.JSONField(
        default=dict,
        blank=True,
        help_text='Only the settings this variant changes, e.g. {"diversity_cap": 0.5, "model_version": 12}.',
    )

    class Meta:
        # Control first, then in creation order: the order of the hash ranges, which must never change live.
        ordering = ("experiment", "-is_control", "pk")
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="variant_name_unique"),
            models.UniqueConstraint(
                fields=["experiment"], condition=models.Q(is_control=True), name="variant_one_control"
            ),
            models.CheckConstraint(condition=models.Q(weight__gte=0, weight__lte=1), name="variant_weight_range"),
            # 0, or at least 1% of the traffic (experiments.validation.MIN_WEIGHT). NOT VALID in the database
            # (migration 0008): rows stored before the rule are kept as they are.
            models.CheckConstraint(
                condition=models.Q(weight=0) | models.Q(weight__gte=MIN_WEIGHT),
                name="variant_weight_minimum",
                violation_error_message=f"A variant's weight must be 0 or at least {MIN_WEIGHT}.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name}{' (control)' if self.is_control else ''}"


class SurfaceDefault(models.Model):
    """What a surface serves outside any experiment; concluding an experiment with a winner updates it."""

    surface = models.SlugField(max_length=50, unique=True)
    config = models.JSONField(default=dict, blank=True, help_text="Settings that differ from the platform defaults.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("surface",)

    def __str__(self) -> str:
        return self.surface


class Impression(models.Model):
    """One recommendation list served: which items, to whom, under which variant. Written in bulk by
    ``flush_impressions``, never on the request path.

    A request has one row per experiment it was in (at most one since namespaces replaced layers; rows of older
    layered experiments may have several), hence the uniqueness of (request_id, experiment) rather than of
    request_id alone; a request outside any experiment has one row with no experiment (NULLS NOT DISTINCT makes that
    one unique too).
    """

    id = models.BigAutoField(primary_key=True)
    request_id = models.CharField(max_length=64)
    served_at = models.DateTimeField()
    surface = models.SlugField(max_length=50)
    # Erasure of a customer removes their impressions with them.
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    session_id = models.CharField(max_length=100, blank=True, default="")
    # The keyed hash of the customer id the list was assigned by (experiments.units): null for a list assigned by its
    # session or request id (stored as they are) and for rows stored before it was recorded. A customer without a row
    # at the flush has their lists stored without them: this makes those lists one unit of the results (and that
    # customer's, once one of their lists carries both), and lets an erasure and an export find them.
    customer_unit = models.UUIDField(null=True, blank=True)
    # PROTECT: an experiment with data is a record of a decision; it is concluded, not deleted.
    experiment = models.ForeignKey(Experiment, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    variant = models.ForeignKey(Variant, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    model_version = models.IntegerField(null=True, blank=True)
    # catalog.Item primary keys in list order (position = index).
    item_pks = ArrayField(models.BigIntegerField(), default=list)
    # Serving time of the list in milliseconds (the latency guardrail's p95); null for lists logged without it.
    latency_ms = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [
            # The results queries: one experiment's impressions by variant, and by day.
            models.Index(name="impression_exp_variant_time", fields=["experiment", "variant", "served_at"]),
            BrinIndex(name="impression_served_brin", fields=["served_at"], autosummarize=True),
            # Export and erasure: the anonymous lists of a session merged into a customer (events.SessionMerge).
            models.Index(
                name="impression_anon_session",
                fields=["session_id", "served_at"],
                condition=models.Q(customer__isnull=True) & ~models.Q(session_id=""),
            ),
            # Export and erasure: the lists of a customer stored before their row existed (small: a customer's lists
            # are stored with them once they have a row). Built partition by partition without blocking the flush
            # (migration 0008).
            models.Index(
                name="impression_customer_unit",
                fields=["customer_unit"],
                condition=models.Q(customer__isnull=True, customer_unit__isnull=False),
            ),
        ]
        constraints = [
            # With served_at: the table is partitioned by month on it (events.partitions, migration 0005) and Postgres
            # requires the partition key in every unique constraint; a replayed flush carries the same served_at.
            models.UniqueConstraint(
                fields=["request_id", "experiment", "served_at"],
                nulls_distinct=False,
                name="impression_request_experiment_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} on {self.surface}"


class BanditWeightLog(models.Model):
    """A variant's traffic weight from a moment on: the bandit's history, drawn on the results page."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="+")
    variant = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="+")
    weight = models.FloatField()
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(name="banditlog_experiment_time", fields=["experiment", "at"])]

    def __str__(self) -> str:
        return f"{self.variant_id}={self.weight:.3f} at {self.at:%Y-%m-%d %H:%M}"
