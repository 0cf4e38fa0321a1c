"""API keys (hashed at rest, scoped, revocable, with a last-used time), the daily recommendation quality figures
and the audit trail of erasures."""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class ApiKey(models.Model):
    class Scope(models.TextChoices):
        RECOMMEND = "recommend", "recommend: read recommendations"
        EVENTS = "events", "events: send interaction events"
        CATALOG = "catalog", "catalog: read and write items and customers"
        ADMIN = "admin", "admin: everything, plus debug traces and forced variants"

    name = models.CharField(max_length=100, help_text="Who uses this key, e.g. 'storefront production'.")
    prefix = models.CharField(max_length=16, unique=True, editable=False, help_text="Identifies the key in logs.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = ArrayField(models.CharField(max_length=16, choices=Scope.choices), default=list)
    rate_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute; empty uses the server default."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scopes__contained_by=["recommend", "events", "catalog", "admin"]),
                name="apikey_scopes_known",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


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
        ordering = ("-date",)
        # The admin lists these rows as the quality dashboard (recsys/admin_views.py).
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


class ErasureRecord(models.Model):
    """That a customer was erased (GDPR art. 17), when, and on whose request: nothing about the customer.

    Deliberately no identifier, not even a salted hash: customer ids are short and guessable, so any hash of one
    could be reversed by trying them all, and would itself be personal data kept after the erasure. (What keeps an
    erased id from coming back is :class:`ErasedCustomer`, a separate suppression list not linked to this record.)
    """

    erased_at = models.DateTimeField(db_index=True)
    requested_by_key_prefix = models.CharField(
        max_length=16, blank=True, default="", help_text="The API key that asked for it (its prefix), if any."
    )
    interactions_deleted = models.PositiveIntegerField(default=0)
    impressions_deleted = models.PositiveIntegerField(default=0)
    online_keys_deleted = models.PositiveIntegerField(default=0, help_text="History and affinity keys in Redis.")
    cached_lists_deleted = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ("-erased_at",)

    def __str__(self) -> str:
        return f"erasure at {self.erased_at:%Y-%m-%d %H:%M:%S}"


class ErasedCustomer(models.Model):
    """A suppression-list entry: a customer id that was erased, so nothing recreates it implicitly.

    Events naming it are rejected (``customer_id``), a session merge into it is refused, and impressions are stored
    without a customer (recsys.privacy). Only an explicit ``PUT /v1/customers/<id>`` creates the customer again.

    The id is kept only as an HMAC-SHA256 under ``ERASURE_HASH_KEY`` (a server secret): without the secret the
    hash reveals nothing, and honouring the erasure needs some way to recognise the id again. Keep the secret
    stable: rotating it forgets every entry. Nothing links an entry to its :class:`ErasureRecord`.
    """

    id_hash = models.CharField(max_length=64, unique=True, editable=False)
    erased_at = models.DateTimeField()

    class Meta:
        verbose_name = "erased customer id"

    def __str__(self) -> str:
        return f"erased id {self.id_hash[:12]}…"
