"""kernel.background.Periodic: one thread per process, started on first use, also in a process forked after it."""

from __future__ import annotations

import multiprocessing
import threading
import time

from kernel.background import Periodic


def _runs_in_child(loop: Periodic, ran: threading.Event, queue: multiprocessing.Queue) -> None:
    ran.clear()
    loop.ensure()  # the parent's thread did not survive the fork: the child starts its own
    queue.put(ran.wait(2))


def test_one_thread_per_process_also_after_a_fork() -> None:
    ran = threading.Event()
    loop = Periodic("test-loop", 0.01, ran.set)
    before = threading.active_count()
    loop.ensure()
    loop.ensure()
    assert threading.active_count() == before + 1
    assert ran.wait(2)
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_runs_in_child, args=(loop, ran, queue))
    child.start()
    assert queue.get(timeout=10) is True
    child.join(10)
    time.sleep(0.05)
    assert threading.active_count() == before + 1  # the parent still has its one thread, no more


def test_only_a_loop_that_ran_runs_again_at_exit() -> None:
    """Every loop ran at exit, also one a process never started (on one Redis, the cluster watch: a round trip at
    every process's exit, the connect timeout when Redis was down; found by a reviewer, 6 December)."""
    import atexit

    before = atexit._ncallbacks()
    loop = Periodic("test-exit", 60, lambda: None)
    assert atexit._ncallbacks() == before
    loop.ensure()
    loop.ensure()
    assert atexit._ncallbacks() == before + 1
    atexit.unregister(loop._run_once)
