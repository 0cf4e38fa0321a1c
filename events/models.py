"""Interactions: every view, click, add-to-cart, purchase and rating a storefront reports; the session merges that
handed anonymous sessions to customers."""

from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.utils import timezone

from catalog.models import Customer, Item


class Interaction(models.Model):
    class Type(models.IntegerChoices):
        VIEW = 1, "view"
        CLICK = 2, "click"
        ADD_TO_CART = 3, "add_to_cart"
        PURCHASE = 4, "purchase"
        RATING = 5, "rating"
        # "Not interested": never shown again to this owner, its neighbours demoted for a while, a negative
        # signal for training (docs/events.md).
        DISMISS = 6, "dismiss"

    id = models.BigAutoField(primary_key=True)
    # The client's idempotency key (or one derived from the event's content): a retry is stored once.
    # The table is partitioned by month (events.partitions, migration 0002): in the database the primary key is
    # (id, occurred_at); ids come from one identity sequence, so ``id`` stays unique and Django's primary key.
    # Opaque keys: byte-wise "C" collation keeps the unique index fast; a constraint, not unique=True, so Django adds
    # no second (LIKE) index that nothing queries.
    event_id = models.CharField(max_length=100, db_collation="C")
    # Erasure of a customer removes their interactions with them.
    # Indexed by interaction_customer_recent, whose first column it is.
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    session_id = models.CharField(max_length=100, blank=True, default="", db_collation="C")
    # Items are deactivated, never deleted, while interactions point at them.
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    type = models.PositiveSmallIntegerField(choices=Type.choices)
    value = models.FloatField(null=True, blank=True, help_text="Rating value, quantity or revenue.")
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    request_id = models.CharField(
        max_length=64, blank=True, default="", help_text="The recommendation response this came from."
    )

    class Meta:
        indexes = [
            # "The latest events of a customer": history for serving, export, erasure.
            models.Index(name="interaction_customer_recent", fields=["customer", "-occurred_at"]),
            # "Events since T": training windows, trending, reconciliation. Events arrive roughly in time order,
            # so a BRIN index answers range scans at a fraction of a B-tree's size and insert cost.
            BrinIndex(name="interaction_occurred_brin", fields=["occurred_at"], autosummarize=True),
            models.Index(
                name="interaction_session_recent",
                fields=["session_id", "-occurred_at"],
                condition=~models.Q(session_id=""),
            ),
            models.Index(name="interaction_request", fields=["request_id"], condition=~models.Q(request_id="")),
        ]
        constraints = [
            # The idempotency key. The table is partitioned by month on occurred_at (events.partitions), and Postgres
            # requires the partition key in every unique constraint, so it is (event_id, occurred_at); the ingest
            # also skips an event_id stored at another time (a client's retry without occurred_at).
            models.UniqueConstraint(fields=["event_id", "occurred_at"], name="interaction_event_time_unique"),
            models.CheckConstraint(
                condition=models.Q(customer__isnull=False) | ~models.Q(session_id=""),
                name="interaction_has_customer_or_session",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} {self.item_id} by {self.customer_id or self.session_id}"


class SessionMerge(models.Model):
    """An anonymous session handed to a customer who logged in (``POST /v1/sessions/{id}/merge``), one row per merge.

    The merge moves the session's interactions to the customer; what the session was *served* (impressions) keeps the
    session, the unit its experiments assigned, and this row says whose it is: an anonymous impression of the session
    is the customer's when this is the first merge of the session at or after it was served. Privacy's export and
    erasure read it that way (an impression flushed after the merge included). An erasure deletes the customer's rows
    with the lists they gave it; a customer deleted otherwise (the admin) leaves them without a customer, so the
    session's later merges still begin where this one ended and no later customer gets what was served before it.
    """

    id = models.BigAutoField(primary_key=True)
    # The collation of the impressions' session_id (not the interactions' "C"): compared with it, by its index.
    session_id = models.CharField(max_length=100)
    # Indexed (the foreign key's index): the sessions merged into a customer, for export and erasure. Null once the
    # customer was deleted other than by an erasure (the boundary stays; see the class' docstring).
    customer = models.ForeignKey(Customer, null=True, on_delete=models.SET_NULL, related_name="+")
    merged_at = models.DateTimeField()

    class Meta:
        indexes = [
            # "The first merge of this session at or after T": whose an anonymous impression of it is.
            models.Index(name="sessionmerge_session_time", fields=["session_id", "merged_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.session_id} -> {self.customer_id} at {self.merged_at:%Y-%m-%d %H:%M:%S}"
