"""The catalog: customers, items, categories and brands, all addressed by the storefront's external ids."""

from datetime import UTC, datetime

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.utils import timezone

from kernel.validation import ID_MAX_LENGTH

# The one id rule's bound (kernel.validation): every external id column is this wide.
EXTERNAL_ID_MAX = ID_MAX_LENGTH
# An item's rules, the same through the API, the admin and import_items: at most MAX_TAGS tags, a description of at
# most MAX_DESCRIPTION characters (so what one path stored, another takes back as it reads), and a created_at (in
# UTC) within years every reader can hold, so that no item stays the newest arrival for centuries.
MAX_TAGS = 50
MAX_DESCRIPTION = 20_000
CREATED_MIN, CREATED_MAX = datetime(1900, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)


def created_at_problem(value: datetime | None) -> str | None:
    """Why ``value`` cannot be an item's created_at (a sentence fragment), or None."""
    if value is not None and not CREATED_MIN <= value < CREATED_MAX:
        return f"must be between {CREATED_MIN.year} and {CREATED_MAX.year} (in UTC)"
    return None


class Category(models.Model):
    external_id = models.CharField(max_length=EXTERNAL_ID_MAX, unique=True)
    name = models.CharField(max_length=200)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")

    class Meta:
        verbose_name_plural = "categories"
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class Brand(models.Model):
    external_id = models.CharField(max_length=EXTERNAL_ID_MAX, unique=True)
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class Item(models.Model):
    external_id = models.CharField(max_length=EXTERNAL_ID_MAX, unique=True)
    title = models.CharField(max_length=500)
    description = models.TextField(blank=True, default="")
    category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="items")
    brand = models.ForeignKey(Brand, null=True, blank=True, on_delete=models.SET_NULL, related_name="items")
    price = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    in_stock = models.BooleanField(default=True)
    active = models.BooleanField(default=True, help_text="Inactive items are never recommended.")
    tags = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, help_text="When the storefront listed the item.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # Admin search by title over a million items: a trigram index makes icontains an index scan.
            GinIndex(name="item_title_trgm", fields=["title"], opclasses=["gin_trgm_ops"]),
            # New arrivals: the newest first, items listed at one instant (an import without created_at) by id, as
            # the offline pipeline orders them (a stable sort over ids), so every process and query agrees.
            models.Index(name="item_created", fields=["-created_at", "id"]),
            # Serving processes re-read only the items changed since their last sync (ranking/item_cache.py).
            models.Index(name="item_updated", fields=["updated_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.external_id})"


class Customer(models.Model):
    external_id = models.CharField(max_length=EXTERNAL_ID_MAX, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    attributes = models.JSONField(default=dict, blank=True)
    personalisation_opt_out = models.BooleanField(
        default=False,
        help_text="Opted-out customers get non-personalised lists and are left out of training.",
    )

    class Meta:
        indexes = [
            # Serving keeps the (few) opted-out ids in memory; this partial index makes loading them a short scan.
            models.Index(
                name="customer_opted_out", fields=["external_id"], condition=models.Q(personalisation_opt_out=True)
            ),
        ]

    def __str__(self) -> str:
        return self.external_id


class ErasedCustomer(models.Model):
    """A suppression-list entry: a customer id that was erased, so nothing recreates it implicitly.

    Events naming it are rejected (``customer_id``), a session merge into it is refused, and impressions are stored
    without a customer (privacy.services). Only an explicit ``PUT /v1/customers/<id>`` creates the customer again.

    The id is kept only as an HMAC-SHA256 under ``ERASURE_HASH_KEY`` (a server secret): without the secret the
    hash reveals nothing, and honouring the erasure needs some way to recognise the id again. Keep the secret
    stable: rotating it forgets every entry. Nothing links an entry to its :class:`ErasureRecord`.
    """

    id_hash = models.CharField(max_length=64, unique=True, editable=False)
    erased_at = models.DateTimeField()

    class Meta:
        db_table = "recsys_erasedcustomer"  # kept from before the move out of recsys/
        verbose_name = "erased customer id"

    def __str__(self) -> str:
        return f"erased id {self.id_hash[:12]}…"
