"""Every Redis key of the experiments app, in one place (docs/experiments.md lists the same)."""

from __future__ import annotations

VERSION = "exp:version"
"""``exp:version`` string: a fresh random token written after every committed change to running experiments,
their variants or surface defaults. Web processes compare it (at most once a second) with the token their in-process
snapshot was loaded under and reload on a difference. A token rather than an INCR counter so that a Redis that lost
its data can never hand out a version a process already holds."""

# The two impression lists share the hash tag {impressions}: the flush moves records between them in one Lua script,
# which Redis Cluster allows only for keys in the same slot.
IMPRESSIONS = "exp:{impressions}"
"""``exp:{impressions}`` list: one compact JSON record per served list, RPUSHed on the request path and drained into
Postgres by ``flush_impressions``."""

IMPRESSIONS_PROCESSING = "exp:{impressions}:processing"
"""``exp:{impressions}:processing`` list: the batch ``flush_impressions`` is storing. Records leave it only after the
rows are committed, so a worker dying mid-batch loses nothing: the next flush stores the batch again (idempotent)."""

FLUSH_LOCK = "lock:exp:flush"
"""``lock:exp:flush``: held (with a TTL longer than the task's hard time limit) while a flush runs, so only one
flusher touches the processing list."""
