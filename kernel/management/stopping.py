"""How a long management command stops when it is asked to: Ctrl-C and SIGTERM unwind it like an exception, so it
can say in one line what it left and exit with the status a shell reports for the signal (imports, the online
state's rebuild)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# Exit statuses of a command stopped by a signal, as a shell reports them (128 + the signal's number).
SIGINT_STATUS = 128 + signal.SIGINT
SIGTERM_STATUS = 128 + signal.SIGTERM


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (``kill``, a service manager or a container stopping the command) unwinds like Ctrl-C, so the
    command says what it left instead of the process dying where it stands."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's (call_command)
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(SIGTERM_STATUS)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_status(exc: KeyboardInterrupt | SystemExit) -> int:
    """The exit status for a command stopped by ``exc`` (Ctrl-C: 130; SIGTERM, through :func:`sigterm_as_exit`:
    143; any other exit: its code, else 1)."""
    if isinstance(exc, KeyboardInterrupt):
        return SIGINT_STATUS
    return exc.code if isinstance(exc.code, int) and exc.code else 1
