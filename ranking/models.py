"""The model registry: one row per trained model version, its artifacts on disk, its metrics and its fate."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils import timezone

from ranking.rerank import MAX_RULE_WEIGHT


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        CANDIDATE = "candidate", "candidate"
        ACTIVE = "active", "active"
        RETIRED = "retired", "retired"
        FAILED = "failed", "failed"

    class Decision(models.TextChoices):
        NONE = "", "not decided"
        FIRST = "first", "activated: no version was active"
        PROMOTED = "promoted", "activated: validation not worse than the active version"
        FORCED = "forced", "activated with --force"
        REJECTED = "rejected", "kept as candidate: validation worse than the active version"
        MANUAL = "manual", "activated by an operator"

    id = models.BigAutoField(primary_key=True)
    # The artifact directory's name under ARTIFACT_ROOT, unique so a re-run never overwrites another version.
    name = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    data_from = models.DateTimeField(null=True, blank=True, help_text="Earliest interaction used.")
    data_to = models.DateTimeField(null=True, blank=True, help_text="Latest interaction used.")
    parameters = models.JSONField(default=dict, blank=True)
    sizes = models.JSONField(default=dict, blank=True, help_text="n_users, n_items, n_interactions.")
    metrics = models.JSONField(default=dict, blank=True, help_text="Validation metrics per source.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    checksum = models.CharField(max_length=64, blank=True, default="", help_text="sha256 over the files' sha256.")
    artifact_path = models.CharField(max_length=500, blank=True, default="")
    ann_kind = models.CharField(max_length=16, blank=True, default="")
    ann_recall = models.FloatField(null=True, blank=True, help_text="Measured recall@100 against exact search.")
    activated_at = models.DateTimeField(null=True, blank=True)
    decision = models.CharField(max_length=16, choices=Decision.choices, blank=True, default=Decision.NONE)
    notes = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            # Serving must never have to choose between two active versions: the database refuses a second one.
            models.UniqueConstraint(
                fields=["status"], condition=models.Q(status="active"), name="model_version_one_active"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def validation_ndcg(self) -> float | None:
        value = (self.metrics or {}).get("validation_ndcg")
        return float(value) if value is not None else None


class BusinessRule(models.Model):
    """A merchandiser's rule: boost, bury, pin or block an item, a category or a brand, on some surfaces, for a
    while. Edited in the admin; serving reads every enabled, published rule once per change (ranking/rules.py).
    A draft is ignored by serving until published: it can be tried on recent traffic first (ranking/dry_run.py).
    A draft with ``replaces`` is a change to a published rule: publishing it swaps the two."""

    class Status(models.TextChoices):
        DRAFT = "draft", "draft (not served)"
        PUBLISHED = "published", "published"

    class Kind(models.TextChoices):
        BOOST = "boost", "boost (move up)"
        BURY = "bury", "bury (move down)"
        PIN = "pin", "pin to a position"
        BLOCK = "block", "block (never show)"

    class Target(models.TextChoices):
        ITEM = "item", "an item"
        CATEGORY = "category", "a category"
        BRAND = "brand", "a brand"

    name = models.CharField(max_length=200, help_text="What the rule is for, e.g. 'Summer sale: garden'.")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    target = models.CharField(max_length=8, choices=Target.choices)
    item = models.ForeignKey("catalog.Item", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    category = models.ForeignKey("catalog.Category", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    brand = models.ForeignKey("catalog.Brand", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    weight = models.FloatField(
        default=0.5,
        validators=[MaxValueValidator(MAX_RULE_WEIGHT)],
        help_text="Boost/bury strength as a share of the list's score range: 1.0 lifts the last candidate level "
        f"with the first (at most {MAX_RULE_WEIGHT:g}).",
    )
    position = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="For pins: the position in the list, 1 = first."
    )
    surfaces = ArrayField(
        models.CharField(max_length=32), default=list, blank=True,
        help_text="Surfaces the rule applies to (e.g. home, similar); empty = every surface.",
    )  # fmt: skip
    starts_at = models.DateTimeField(null=True, blank=True, help_text="Empty = active now.")
    ends_at = models.DateTimeField(null=True, blank=True, help_text="Empty = until switched off.")
    enabled = models.BooleanField(default=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PUBLISHED,
        help_text="Drafts are never served: try them on recent traffic, then publish. (The admin's add form starts "
        "new rules as drafts; rules created in code are published unless they say otherwise.)",
    )  # fmt: skip
    replaces = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="drafts",
        help_text="A draft that changes this published rule: publishing the draft replaces it.",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ("-updated_at",)
        constraints = [
            models.CheckConstraint(
                name="rule_target_matches",
                condition=(
                    models.Q(target="item", item__isnull=False, category__isnull=True, brand__isnull=True)
                    | models.Q(target="category", item__isnull=True, category__isnull=False, brand__isnull=True)
                    | models.Q(target="brand", item__isnull=True, category__isnull=True, brand__isnull=False)
                ),
            ),
            models.CheckConstraint(
                name="rule_pin_is_an_item_at_a_position",
                condition=~models.Q(kind="pin") | models.Q(target="item", position__gte=1),
            ),
            models.CheckConstraint(name="rule_weight_not_negative", condition=models.Q(weight__gte=0)),
            models.CheckConstraint(
                name="rule_window_ordered",
                condition=models.Q(starts_at__isnull=True)
                | models.Q(ends_at__isnull=True)
                | models.Q(ends_at__gt=models.F("starts_at")),
            ),
            models.CheckConstraint(
                name="rule_only_drafts_replace",
                condition=models.Q(replaces__isnull=True) | models.Q(status="draft"),
            ),
        ]
        indexes = [models.Index(name="rule_enabled", fields=["enabled"])]

    def __str__(self) -> str:
        return self.name

    @property
    def target_label(self) -> str:
        return str(self.item or self.category or self.brand or "?")
