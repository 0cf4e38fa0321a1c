"""Where the web workers' CPU goes under load, by the binary that spent it (Linux ``perf``, sampling every process
of the workers at a fixed rate): the Python interpreter, numpy's C code, BLAS/LAPACK, the compiled kernels and the
compiled ranker (numba and lleaves machine code, which perf sees as anonymous executable memory), faiss, the C
library and the kernel. cProfile and py-spy see Python frames; this sees what runs on the core, so it tells Python
glue (the interpreter and numpy's per-call overhead on small arrays) from numeric work (the compiled loops, BLAS,
faiss, large copies). Used by ``bench_serving.py``; not a test.

Needs ``perf`` (Debian: ``linux-perf``) and the right to record these processes (root, or
``kernel.perf_event_paranoid`` ≤ 2 for one's own processes); without either the bench says so and skips the table.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

# (group, does a perf "dso" name belong to it), first match wins; the rest is "other extension modules".
GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("Python interpreter", re.compile(r"^libpython|^python3")),
    ("numpy (C)", re.compile(r"^_multiarray_umath|^_umath_linalg|^_pocketfft|^_bounded_integers|^_generator")),
    ("BLAS / LAPACK", re.compile(r"openblas|libblas|liblapack|libmkl|libflexiblas", re.IGNORECASE)),
    ("compiled kernels + ranker (numba, lleaves)", re.compile(r"^\[JIT\]|^_dispatcher|^_nrt_python|^_helperlib")),
    ("faiss", re.compile(r"faiss")),
    ("C library (malloc, memcpy, ...)", re.compile(r"^libc\.|^libm\.|^libstdc\+\+|^ld-linux|^libgcc")),
    ("kernel (syscalls, network, scheduling, faults)", re.compile(r"^\[kernel|^\[vdso\]")),
]
OTHER = "other extension modules (orjson, hiredis, ...)"
LABELS = [name for name, _ in GROUPS] + [OTHER]
# What the bench sums as Python glue (the interpreter, numpy's fixed cost per call) and as numeric work.
GLUE = ("Python interpreter", "numpy (C)")
NUMERIC = ("compiled kernels + ranker (numba, lleaves)", "BLAS / LAPACK", "faiss")
_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")


def unavailable() -> str | None:
    """Why perf cannot record here (None when it can)."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: apt-get install linux-perf)"
    probe = subprocess.run(
        ["perf", "record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"perf cannot record here: {(probe.stderr.strip().splitlines() or ['?'])[-1][:160]}"
    return None


def group_of(dso: str) -> str:
    for name, pattern in GROUPS:
        if pattern.search(dso):
            return name
    return OTHER


def shares(report: str) -> dict[str, float]:
    """``perf report --sort dso --stdio`` output -> each group's share of the samples (0..1)."""
    out = dict.fromkeys(LABELS, 0.0)
    for line in report.splitlines():
        if line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match:
            out[group_of(match.group(2))] += float(match.group(1)) / 100
    return out


class Recording:
    """``perf record`` of ``pids`` for ``seconds`` (started on enter, read on exit): ``.shares`` after the block."""

    def __init__(self, pids: list[int], seconds: float) -> None:
        self.pids, self.seconds = pids, seconds
        self.shares: dict[str, float] = {}
        self.error: str | None = None  # why there are no shares (perf failed), after the block
        self._dir = tempfile.TemporaryDirectory()
        self._data = Path(self._dir.name) / "perf.data"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recording:
        self._process = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-o", str(self._data),
             "-p", ",".join(map(str, self.pids)), "--", "sleep", str(self.seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._process is not None
        try:
            self._process.wait(timeout=self.seconds + 60)
            if kind is None:
                report = subprocess.run(
                    ["perf", "report", "-i", str(self._data), "--no-children", "--sort", "dso", "--stdio", "-g",
                     "none"],
                    capture_output=True, text=True,
                )  # fmt: skip
                found = shares(report.stdout) if report.returncode == 0 else {}
                if any(found.values()):
                    self.shares = found
                else:
                    self.error = f"perf recorded nothing usable ({(report.stderr.strip() or 'no samples')[:160]})"
        finally:
            if self._process.poll() is None:
                self._process.kill()
            self._dir.cleanup()
