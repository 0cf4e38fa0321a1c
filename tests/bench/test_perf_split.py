"""bench/perf_split.py: perf's report by binary grouped as the serving bench prints it, and a real recording."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import perf_split

REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Overhead  Shared Object
# ........  .................................................
#
    57.34%  libpython3.11.so.1.0
    14.97%  _multiarray_umath.cpython-311-x86_64-linux-gnu.so
     8.05%  libc.so.6
     7.08%  [kernel.kallsyms]
     3.83%  [JIT] tid 594
     3.79%  [JIT] tid 593
     1.55%  libscipy_openblas64_-56d6093b.so
     1.43%  _swigfaiss_avx512.cpython-311-x86_64-linux-gnu.so
     0.31%  libm.so.6
     0.26%  orjson.cpython-311-x86_64-linux-gnu.so
     0.24%  _dispatcher.cpython-311-x86_64-linux-gnu.so
     0.12%  [vdso]
"""


def test_report_lines_are_grouped_by_binary() -> None:
    shares = perf_split.shares(REPORT)
    assert list(shares) == perf_split.LABELS
    assert shares["Python interpreter"] == pytest.approx(0.5734)
    assert shares["numpy (C)"] == pytest.approx(0.1497)
    assert shares["BLAS / LAPACK"] == pytest.approx(0.0155)
    # numba's and lleaves' machine code is anonymous executable memory to perf, with numba's dispatcher beside it.
    assert shares["compiled kernels + ranker (numba, lleaves)"] == pytest.approx(0.0383 + 0.0379 + 0.0024)
    assert shares["faiss"] == pytest.approx(0.0143)
    assert shares["C library (malloc, memcpy, ...)"] == pytest.approx(0.0805 + 0.0031)
    assert shares["kernel (syscalls, network, scheduling, faults)"] == pytest.approx(0.0708 + 0.0012)
    assert shares[perf_split.OTHER] == pytest.approx(0.0026)
    assert sum(shares.values()) == pytest.approx(0.9897)  # every line counted once (the rest of 100% was cut here)


def test_a_report_without_samples_gives_zero_shares() -> None:
    assert set(perf_split.shares("# nothing recorded\n").values()) == {0.0}


PERF_UNAVAILABLE = perf_split.unavailable()
needs_perf = pytest.mark.skipif(PERF_UNAVAILABLE is not None, reason=f"perf: {PERF_UNAVAILABLE}")


def _record(code: str, seconds: float) -> perf_split.Recording:
    """``seconds`` of perf over a Python process running ``code`` (stopped after)."""
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        with perf_split.Recording([process.pid], seconds) as recording:
            pass
    finally:
        process.kill()
        process.wait()
    return recording


@needs_perf
def test_a_recording_of_a_python_loop_is_mostly_the_interpreter() -> None:
    recording = _record("import time\nend = time.time() + 30\nwhile time.time() < end: pass", 2)
    assert recording.error is None
    assert recording.shares["Python interpreter"] > 0.5, recording.shares


@needs_perf
def test_a_recording_of_nothing_says_so() -> None:
    recording = _record("import time; time.sleep(30)", 1)
    assert recording.shares == {}
    assert recording.error is not None
    assert "nothing usable" in recording.error
