"""The LambdaMART ranker on the serving path, compiled to machine code by lleaves.

LightGBM's own ``predict`` spends about 0.7 ms on a request's few hundred candidate rows (the demo ranker: 77
trees, one thread), most of the ranking stage. lleaves compiles the same trees with LLVM into one function that
scores those rows in about 0.05 ms with the same results (to float rounding; ``tests/ranking/
test_compiled_ranker.py`` holds them to 1e-6). Compiling takes a second or two, so a process scores with
LightGBM until a background thread has had the version's ranker compiled (in a child process, so LLVM's memory
and any crash of it stay out of the serving worker) or has loaded the object file an earlier process left in
``COMPILED_RANKER_DIR``. Files there are named by the model text's digest and the CPU they were compiled
for (machine code for one CPU must not run on another), written under a temporary name and renamed, and compiled
by one process at a time (a file lock): sibling workers and restarts load them in milliseconds.

Anything going wrong on the way (lleaves missing, an LLVM error, an unwritable directory) leaves the booster
serving, logged; ``recsys_ranker_compiles_total`` counts the outcomes and a request's ``?debug=true`` trace names
the engine that scored it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray
from prometheus_client import Counter

from ranking.ranker import score as booster_score

logger = logging.getLogger(__name__)

COMPILES = Counter(
    "recsys_ranker_compiles_total",
    "Rankers this process made ready as machine code, by how (compiled here or loaded from the cache directory), "
    "and failures (serving stays on LightGBM's predict).",
    ["outcome"],
)

# The compiler's child process: lleaves needs only the model file and where to write the object file.
_COMPILE = "import sys, lleaves; lleaves.Model(model_file=sys.argv[1]).compile(cache=sys.argv[2])"
_COMPILE_TIMEOUT_S = 600
KEEP_COMPILED = 8  # object files kept in the cache directory, the most recently used


def _cpu_tag() -> str:
    """The host CPU and its features, as the compiled code is specialised for them."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    return f"{llvm.get_host_cpu_name()}-{hashlib.blake2b(features.encode(), digest_size=6).hexdigest()}"


def _prune(cache_dir: Path, *, keep: Path) -> None:
    """Drop all but the ``KEEP_COMPILED`` most recently used object files (one per version trained here)."""
    files = sorted(cache_dir.glob("ranker-*.o"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in files[KEEP_COMPILED:]:
        if stale != keep:
            stale.unlink(missing_ok=True)


class ServingRanker:
    """A version's ranker: ``score(X)`` with LightGBM until the compiled function is ready, then with it."""

    def __init__(self, booster: lgb.Booster, cache_dir: Path | None) -> None:
        """``cache_dir`` None: never compile, LightGBM's predict serves."""
        self.booster = booster
        self._compiled: Any = None  # lleaves.Model once ready
        self._ready = threading.Event()
        if cache_dir is not None:
            threading.Thread(
                target=self._compile, args=(booster.model_to_string(), cache_dir), name="ranker-compile", daemon=True
            ).start()
        else:
            self._ready.set()

    @property
    def engine(self) -> str:
        return "lleaves" if self._compiled is not None else "lightgbm"

    def wait_compiled(self, timeout: float) -> bool:
        """Block until the compile attempt has finished (either way); True when the compiled code serves."""
        self._ready.wait(timeout)
        return self._compiled is not None

    def score(self, X: NDArray[np.float32]) -> NDArray[np.float32]:
        compiled = self._compiled
        if compiled is None or X.shape[0] == 0:
            return booster_score(self.booster, X)
        rows = np.ascontiguousarray(X, dtype=np.float64)
        return np.asarray(compiled.predict(rows, n_jobs=1), dtype=np.float32)

    def _compile(self, model_text: str, cache_dir: Path) -> None:
        started = time.perf_counter()
        try:
            import lleaves

            digest = hashlib.blake2b(model_text.encode(), digest_size=12).hexdigest()
            cache_dir.mkdir(parents=True, exist_ok=True)
            target = cache_dir / f"ranker-{digest}-{_cpu_tag()}.o"
            with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".tmp-") as tmp:
                model_file = Path(tmp) / "model.txt"
                model_file.write_text(model_text)
                model = lleaves.Model(model_file=str(model_file))
                outcome = "loaded"
                # One process compiles; the others wait here and then load its file.
                with (cache_dir / ".lock").open("a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    try:
                        if not target.exists():
                            outcome = "compiled"
                            scratch = Path(tmp) / "ranker.o"
                            # In a child process: LLVM's working memory (tens of MiB) is not left behind in
                            # the serving process, and a compiler crash cannot take the worker down with it.
                            subprocess.run(
                                [sys.executable, "-c", _COMPILE, str(model_file), str(scratch)],
                                check=True, capture_output=True, timeout=_COMPILE_TIMEOUT_S,
                            )  # fmt: skip
                            os.replace(scratch, target)
                            _prune(cache_dir, keep=target)
                        else:
                            os.utime(target)  # recently used: kept by _prune
                    finally:
                        fcntl.flock(lock, fcntl.LOCK_UN)
                model.compile(cache=str(target))  # loads the object file
            self._check(model)
            self._compiled = model
            COMPILES.labels(outcome).inc()
            logger.info(
                "ranker_compiled",
                extra={"outcome": outcome, "seconds": round(time.perf_counter() - started, 3), "file": target.name},
            )
        except Exception as error:
            COMPILES.labels("failed").inc()
            stderr = getattr(error, "stderr", b"") or b""
            logger.warning(
                "ranker_compile_failed: scoring with LightGBM's predict",
                exc_info=True, extra={"compiler_output": stderr.decode(errors="replace")[-2000:]},
            )  # fmt: skip
        finally:
            self._ready.set()

    def _check(self, model: Any) -> None:
        """The compiled function must agree with the booster before it serves (a stale or foreign cache file, a
        compiler bug): on a few rows with values and missing features (NaN, as absent sources are)."""
        rng = np.random.default_rng(0)
        rows = rng.normal(size=(16, self.booster.num_feature())) * 3
        rows[rng.random(rows.shape) < 0.3] = np.nan
        expected = self.booster.predict(rows, num_threads=1)
        got = model.predict(np.ascontiguousarray(rows), n_jobs=1)
        if not np.allclose(got, expected, rtol=1e-6, atol=1e-9):
            raise RuntimeError(f"compiled ranker disagrees with LightGBM by up to {np.abs(got - expected).max():g}")
