"""Database routing: training and evaluation read from the replica (``DATABASE_REPLICA_URL``) when one is
configured; every other query, and every write, goes to the primary (``default``).

Reads go to the replica only inside :func:`replica_reads`, never by default: a request that writes then reads
must see its own write, and a streaming replica lags. Raw SQL asks :func:`read_alias` for its connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS

REPLICA = "replica"
_replica_reads: ContextVar[bool] = ContextVar("replica_reads", default=False)


def replica_configured() -> bool:
    return REPLICA in settings.DATABASES


def read_alias() -> str:
    """The alias to read from here: the replica inside :func:`replica_reads` when one is configured."""
    return REPLICA if _replica_reads.get() and replica_configured() else DEFAULT_DB_ALIAS


@contextmanager
def replica_reads() -> Iterator[str]:
    """ORM reads inside the block go to the replica (when configured); yields the alias for raw SQL. Writes
    inside the block still go to the primary. For long analytical reads that tolerate replication lag."""
    token = _replica_reads.set(True)
    try:
        yield read_alias()
    finally:
        _replica_reads.reset(token)


class ReplicaRouter:
    """Django's ``DATABASE_ROUTERS`` entry: reads per :func:`read_alias`, writes and migrations on the primary."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        return read_alias()

    def db_for_write(self, model: type, **hints: Any) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: object, obj2: object, **hints: Any) -> bool:
        # Both aliases hold the same data (the replica is a copy of the primary).
        return True

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        return db == DEFAULT_DB_ALIAS
