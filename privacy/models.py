"""The audit trail of erasures (nothing about the customer erased)."""

from django.db import models


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
        db_table = "recsys_erasurerecord"  # kept from before the move out of recsys/
        ordering = ("-erased_at",)

    def __str__(self) -> str:
        return f"erasure at {self.erased_at:%Y-%m-%d %H:%M:%S}"
