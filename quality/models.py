"""The daily recommendation quality figures the dashboard draws."""

from django.db import models


class QualitySnapshot(models.Model):
    """One UTC day of recommendation quality, upserted by ``recsys.tasks.quality_refresh`` every five minutes (today
    so far; yesterday once more after midnight, so late clicks and the last minutes count). Drawn by the dashboard.

    Rates are null when their denominator is zero: "no lists served" is not "a CTR of 0%".
    """

    date = models.DateField(unique=True)
    impressions = models.PositiveBigIntegerField(default=0, help_text="Recommendation lists served.")
    clicks = models.PositiveBigIntegerField(default=0, help_text="Lists with at least one attributed click.")
    conversions = models.PositiveBigIntegerField(default=0, help_text="Lists with at least one attributed purchase.")
    ctr = models.FloatField(null=True, blank=True, help_text="clicks / impressions")
    conversion_rate = models.FloatField(null=True, blank=True, help_text="conversions / impressions")
    active_items = models.PositiveIntegerField(null=True, blank=True)
    coverage_24h = models.FloatField(
        null=True, blank=True, help_text="Distinct active items shown that day / active items."
    )
    coverage_7d = models.FloatField(
        null=True, blank=True, help_text="Distinct active items shown in the 7 days up to then / active items."
    )
    max_category_share = models.FloatField(
        null=True, blank=True, help_text="Mean share of the most frequent category per list (lower = more diverse)."
    )
    latency_p95_ms = models.FloatField(
        null=True,
        blank=True,
        help_text="From the Prometheus multi-process files (PROMETHEUS_MULTIPROC_DIR); empty where not available.",
    )
    by_surface = models.JSONField(
        default=list, blank=True, help_text="Per surface, experiment and variant: impressions, clicks, conversions."
    )
    computed_at = models.DateTimeField()

    class Meta:
        db_table = "recsys_qualitysnapshot"  # kept from before the move out of recsys/
        ordering = ("-date",)
        # The admin lists these rows as the quality dashboard (quality/admin.py).
        verbose_name_plural = "quality dashboard"
        constraints = [
            *(
                models.CheckConstraint(
                    name=f"quality_{rate}_in_range",
                    condition=models.Q(**{f"{rate}__isnull": True}) | models.Q(**{f"{rate}__range": (0, 1)}),
                )
                for rate in ("ctr", "conversion_rate", "coverage_24h", "coverage_7d")
            ),
            models.CheckConstraint(
                name="quality_outcomes_within_impressions",
                condition=models.Q(clicks__lte=models.F("impressions"), conversions__lte=models.F("impressions")),
            ),
        ]

    def __str__(self) -> str:
        return f"quality {self.date:%Y-%m-%d}"
