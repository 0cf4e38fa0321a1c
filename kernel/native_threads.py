"""Native thread pools (BLAS, OpenMP) sized on purpose per process kind, not by the host's defaults.

OpenBLAS and OpenMP start one thread per core in every process that loads them. A web server runs one process per
core, each serving one request at a time on small arrays (a user vector, a few hundred candidates): per-process
pools of every core oversubscribe the CPU and make serving's speed depend on how the host's BLAS is configured
(issue 18 measured 2x between hosts). So each web process runs its native libraries on one thread; a worker
training a model keeps every core. threadpoolctl sets the pools of the libraries already loaded, so the libraries
serving uses are imported first.
"""

from __future__ import annotations

import os
from typing import Any

# Read by OpenBLAS/OpenMP when they load: set before the first import so no pool of every core is ever started.
_POOL_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_for_serving(threads: int | None = None) -> list[dict[str, Any]]:
    """Size every native pool of this (web) process to ``threads`` (``WEB_NATIVE_THREADS``, default 1) and return
    threadpoolctl's description of the pools. Call it at process start, before serving the first request."""
    threads = threads or int(os.environ.get("WEB_NATIVE_THREADS", "1"))
    for name in _POOL_VARIABLES:
        os.environ[name] = str(threads)
    # The native libraries serving uses, loaded now so their pools exist to be sized.
    import faiss
    import lightgbm  # noqa: F401  (loads libgomp)
    import numpy  # noqa: F401
    import scipy.sparse  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=threads)
    faiss.omp_set_num_threads(threads)
    return threadpool_info()


def describe() -> list[dict[str, Any]]:
    """The native pools of this process as threadpoolctl sees them (library, API, version, threads)."""
    from threadpoolctl import threadpool_info

    return [
        {key: pool.get(key) for key in ("user_api", "internal_api", "version", "num_threads", "architecture")}
        for pool in threadpool_info()
    ]
