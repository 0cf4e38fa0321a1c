"""What the catalog tells the apps above it, which it may not name (the layers: docs/architecture.md)."""

from __future__ import annotations

from django.dispatch import Signal

# Sent once the transaction that created customer rows has committed, with ``customers``: {external id: primary key}
# of the rows it created (an event's or an import's first customers, a session merge into a new id, PUT
# /v1/customers, an opt-out of an unknown id). Receivers run in the committing request, after its commit: keep them
# short, and a failing receiver is logged, never raised (``send_robust``).
customers_created = Signal()
