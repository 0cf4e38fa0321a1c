"""Per-process background loops for work taken off the request path (shared kernel: imports no app of ours).

A loop's thread starts on first use in each process: gunicorn forks its workers after import, and a thread started
before the fork would not exist in them. The loop also runs once at interpreter exit, so a worker stopped
gracefully hands over what it still holds.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Periodic:
    """Runs ``work`` every ``interval`` seconds in a daemon thread of this process, from the first ``ensure()``."""

    def __init__(self, name: str, interval: float, work: Callable[[], None]) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self._pid = 0
        self._lock = threading.Lock()
        atexit.register(self._run_once)

    def ensure(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=self._loop, name=self.name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            self._run_once()

    def _run_once(self) -> None:
        try:
            self.work()
        except Exception:  # the loop must outlive anything one run can raise
            logger.exception("background_work_failed", extra={"loop": self.name})
