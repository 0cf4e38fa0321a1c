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


# Which process this is, as a count of forks: a loop compares it with the one it started in, which costs no system
# call (os.getpid() did, on every request that queued work).
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class Periodic:
    """Runs ``work`` every ``interval`` seconds in a daemon thread of this process, from the first ``ensure()``."""

    def __init__(self, name: str, interval: float, work: Callable[[], None], *, at_exit: bool = True) -> None:
        """``at_exit``: run once more when the process exits (a loop that holds work to hand over)."""
        self.name = name
        self.interval = interval
        self.work = work
        self.at_exit = at_exit
        self._started_in = -1  # the value of _forks when this process's thread started
        self._lock = threading.Lock()
        self._at_exit = False  # inherited by a fork, as the registration itself is

    def ensure(self) -> None:
        if self._started_in == _forks:
            return
        with self._lock:
            if self._started_in == _forks:
                return
            self._started_in = _forks
            if self.at_exit and not self._at_exit:  # a last run at exit, in processes that ran the loop only
                self._at_exit = True
                atexit.register(self._run_once)
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
