"""The pseudonymous experiment unit of a customer id (``Impression.customer_unit``).

A list asked for under a customer id is assigned by that id (``ranking.serving.experiment_unit``), but its
impression can be stored without the customer: the flush creates no customer (a read must not create data), so a
customer the platform has not heard of yet has their first lists stored customerless. Each list then looked like a
unit of its own in the results, all in the one arm the id hashes to. The impression therefore also keeps a keyed hash
of the id: the results count those lists as one unit, and link it to the customer once one of their lists in the
experiment carries both (experiments.selectors); an erasure and an export find them by it (privacy.services).

HMAC-SHA256 under ``settings.EXPERIMENT_UNIT_HASH_KEY`` (a server secret, ``SECRET_KEY`` by default), truncated to 128
bits and stored as a ``uuid`` (16 bytes): without the secret it reveals nothing about the id, and no raw id of a
customer without a row is ever stored. Keep the secret stable: rotating it splits the lists of a customer without a
row from before and after it into two units, and an erasure no longer finds those stored under the old secret.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from django.conf import settings

# What is hashed: the kind of unit, then the id. Only customer ids are hashed today (a session's or a request's id is
# stored as it is, and is its unit: experiments.selectors).
_CUSTOMER = b"c:"


def customer_unit(customer_id: str) -> uuid.UUID:
    """The keyed hash of ``customer_id`` as an impression stores it (the same id always gives the same value)."""
    message = _CUSTOMER + customer_id.encode("utf-8", "surrogatepass")
    digest = hmac.new(settings.EXPERIMENT_UNIT_HASH_KEY.encode(), message, hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16])
