"""What each answer showed its owner, kept for later ``exclude_request_ids`` (a page's second and later lists): a
per-process buffer (``SHOWN``) a background loop writes to Redis off the request path. ``ranking.serving`` (a
list) and ``ranking.pages`` (a whole page) note every answer here, and read this process's pending ones before
Redis."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import redis

from events import online as events_online
from kernel.background import Periodic

logger = logging.getLogger("ranking.serving")  # the name its log lines had before this module was split out

SHOWN_TTL_SECONDS = events_online.SHOWN_TTL_SECONDS


class _ShownBuffer:
    """What answers showed their owners (for ``exclude_request_ids``), written to Redis off the request path: a
    background loop of this process sends what accumulated every 50 ms in one pipeline, so a list still costs one
    round trip when cached (docs/architecture.md). Until then this process reads its own pending answers."""

    def __init__(self, interval: float = 0.05) -> None:
        self._pending: dict[str, dict[str, list[int]]] = {}
        self._lock = threading.Lock()
        self._loop = Periodic("shown-writer", interval, self.flush)

    def add(self, owner: str, answers: dict[str, list[int]]) -> None:
        with self._lock:
            self._pending.setdefault(owner, {}).update(answers)
        self._loop.ensure()

    def pending(self, owners: Sequence[str], request_ids: Sequence[str]) -> np.ndarray:
        with self._lock:
            found = [
                pk for owner in owners for request_id in request_ids
                for pk in self._pending.get(owner, {}).get(request_id, ())
            ]  # fmt: skip
        return np.unique(np.asarray(found, np.int64))

    def flush(self) -> None:
        """Write what is pending; entries stay readable here until Redis has them (a reader that looks here first
        and in Redis after never misses one), then go (written or not: a failed write is logged, not retried)."""
        with self._lock:
            pending = {owner: dict(answers) for owner, answers in self._pending.items()}
        if not pending:
            return
        try:
            events_online.write_shown(pending, ttl_seconds=SHOWN_TTL_SECONDS)
        except redis.RedisError:
            logger.warning("shown_write_failed", extra={"owners": len(pending)})
        with self._lock:
            for owner, answers in pending.items():
                mine = self._pending.get(owner)
                if mine is None:
                    continue
                for request_id in answers:
                    mine.pop(request_id, None)
                if not mine:
                    del self._pending[owner]

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()


SHOWN = _ShownBuffer()


def remember_shown(shown: dict[str, dict[str, list[int]]]) -> None:
    """Note what each answer showed its owner, for later ``exclude_request_ids`` (never fails a request)."""
    for owner, answers in shown.items():
        SHOWN.add(owner, answers)
