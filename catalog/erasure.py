"""The suppression list of erased customer ids (catalog.models.ErasedCustomer): written by an erasure, read where a
customer would otherwise be created implicitly (event ingestion, session merge).

Ids are compared by HMAC-SHA256 under ``settings.ERASURE_HASH_KEY``; the list is read only for ids that have no
customer row, so the common path (a known customer) never queries it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings

from catalog.models import ErasedCustomer


def id_hash(customer_id: str) -> str:
    return hmac.new(settings.ERASURE_HASH_KEY.encode(), customer_id.encode(), hashlib.sha256).hexdigest()


def erased_ids(customer_ids: Iterable[str]) -> set[str]:
    """Those of ``customer_ids`` that were erased (one query; none for an empty input)."""
    by_hash = {id_hash(customer_id): customer_id for customer_id in customer_ids}
    if not by_hash:
        return set()
    found = ErasedCustomer.objects.filter(id_hash__in=list(by_hash)).values_list("id_hash", flat=True)
    return {by_hash[value] for value in found}


def tombstone_add(*, customer_id: str, erased_at: datetime) -> None:
    """Remember that ``customer_id`` was erased (idempotent; call inside the erasure's transaction)."""
    ErasedCustomer.objects.get_or_create(id_hash=id_hash(customer_id), defaults={"erased_at": erased_at})
