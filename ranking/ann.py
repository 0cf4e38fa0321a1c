"""The faiss index over item vectors: choose, build, tune to a recall target against exact search, write and read.
Pure: numpy arrays and files in, faiss indexes out; no ORM, Redis or settings.

Every index scores by inner product (ALS scores are dot products; content vectors are unit length, so the dot
product is their cosine). Kinds: ``flat`` (exact, ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``) and ``ivf``
(``IndexIVFFlat``). The search-time knob (``efSearch`` / ``nprobe``) is raised until recall@k against exact search
on sampled queries reaches the target, and the result is recorded so serving applies the same value.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")
# Below this many items an exact scan costs well under a millisecond per query on one core: no approximation.
FLAT_MAX_ITEMS = 50_000
DEFAULT_RECALL_TARGET = 0.95
DEFAULT_RECALL_K = 100
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
# Doubling stops here; a knob this high that still misses the target means the index kind is wrong for the data.
MAX_EF_SEARCH = 8192
MAX_NPROBE_SHARE = 1.0  # nprobe = nlist scans every list: exact, so the target is always reachable

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AnnReport:
    """What was built and what it measured; stored in meta.json and on the ModelVersion row."""

    kind: str
    n_items: int
    dim: int
    params: dict[str, Any] = field(default_factory=dict)
    recall: float | None = None  # recall@k of the tuned index against exact search
    recall_k: int = DEFAULT_RECALL_K
    n_queries: int = 0
    build_seconds: float = 0.0
    tune_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_kind(n_items: int, requested: str = "auto", flat_max_items: int = FLAT_MAX_ITEMS) -> str:
    """``auto``: exact search for small catalogs, HNSW above ``flat_max_items``; any other value is validated."""
    if requested == "auto":
        return "flat" if n_items < flat_max_items else "hnsw"
    if requested not in KINDS:
        raise ValueError(f"unknown index kind {requested!r}; choose one of auto, {', '.join(KINDS)}")
    return requested


def _as_matrix(vectors: npt.ArrayLike) -> FloatMatrix:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def ivf_nlist(n_items: int) -> int:
    """About 4 sqrt(n) lists (faiss's rule of thumb), a power of two, at least 16 and at most n / 39 so k-means
    has its recommended 39 training points per centroid."""
    target = max(16, 4 * math.isqrt(max(n_items, 1)))
    nlist = 1 << (target - 1).bit_length()
    return int(max(1, min(nlist, n_items // 39 or 1)))


def build_index(
    vectors: npt.ArrayLike,
    kind: str,
    *,
    hnsw_m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    nlist: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """An inner-product index of ``kind`` holding ``vectors`` (row i is item index i)."""
    x = _as_matrix(vectors)
    n, dim = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    elif kind == "ivf":
        nlist = nlist or ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample: 64 points per centroid is plenty and bounds training time on large catalogs.
        rng = np.random.default_rng(seed)
        sample = x if n <= 64 * nlist else x[np.sort(rng.choice(n, 64 * nlist, replace=False))]
        index.cp.seed = seed
        index.train(sample)
        # IndexIVF owns the quantizer from here (otherwise Python may free it under the index).
        index.own_fields = True
        quantizer.this.disown()
    else:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if n:
        index.add(x)
    return index


def index_kind(index: faiss.Index) -> str:
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(base, faiss.IndexIVF):
        return "ivf"
    return "flat"


def apply_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Set the stored search-time knob (``efSearch`` for HNSW, ``nprobe`` for IVF); flat has none."""
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW) and "efSearch" in params:
        base.hnsw.efSearch = int(params["efSearch"])
    elif isinstance(base, faiss.IndexIVF) and "nprobe" in params:
        base.nprobe = int(params["nprobe"])


def search(index: faiss.Index, queries: npt.ArrayLike, k: int) -> tuple[FloatMatrix, npt.NDArray[np.int64]]:
    """(scores, item indices) of the ``k`` best items per query, best first; -1 pads when fewer exist."""
    q = _as_matrix(queries)
    if q.ndim == 1:
        q = q[None, :]
    scores, idx = index.search(q, k)
    return scores, idx


def exact_top_k(vectors: npt.ArrayLike, queries: npt.ArrayLike, k: int) -> npt.NDArray[np.int64]:
    """Ground truth: the exact top-``k`` by inner product."""
    flat = faiss.IndexFlatIP(_as_matrix(vectors).shape[1])
    flat.add(_as_matrix(vectors))
    return flat.search(_as_matrix(queries), k)[1]


def recall_at_k(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    """Mean share of each query's exact top-k (``truth``) present in the index's top-k (``found``)."""
    k = truth.shape[1]
    hits = 0
    for row_found, row_truth in zip(found[:, :k], truth, strict=True):
        hits += np.intersect1d(row_found[row_found >= 0], row_truth[row_truth >= 0]).size
    valid = int((truth >= 0).sum())
    return hits / valid if valid else 1.0


def tune_index(
    index: faiss.Index,
    queries: npt.ArrayLike,
    truth: npt.NDArray[np.int64],
    *,
    target: float = DEFAULT_RECALL_TARGET,
) -> tuple[dict[str, Any], float]:
    """Double ``efSearch`` / ``nprobe`` from a small start until recall@k >= ``target`` (k = truth's width).

    Returns the chosen params and the measured recall; if the cap is reached first, the best it got (the caller
    decides whether that is acceptable). Flat indexes are exact and return recall 1.0 without searching.
    """
    k = truth.shape[1]
    kind = index_kind(index)
    if kind == "flat":
        return {}, 1.0
    base = faiss.downcast_index(index)
    if kind == "hnsw":
        name, value, cap = "efSearch", max(k, 32), max(MAX_EF_SEARCH, k)
    else:
        name, value, cap = "nprobe", 1, max(1, int(base.nlist * MAX_NPROBE_SHARE))
    while True:
        params = {name: value}
        apply_search_params(index, params)
        recall = recall_at_k(search(index, queries, k)[1], truth)
        if recall >= target or value >= cap:
            return params, recall
        value = min(value * 2, cap)


def build_tuned(
    vectors: npt.ArrayLike,
    *,
    kind: str = "auto",
    queries: npt.ArrayLike | None = None,
    n_queries: int = 1000,
    k: int = DEFAULT_RECALL_K,
    target: float = DEFAULT_RECALL_TARGET,
    seed: int = 0,
    flat_max_items: int = FLAT_MAX_ITEMS,
    hnsw_m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
) -> tuple[faiss.Index, AnnReport]:
    """Build an index of ``kind`` (``auto`` picks by size) and tune it to ``target`` recall@``k``.

    ``queries`` are what serving will search with (e.g. user vectors); without them, sampled item vectors are used.
    Recall is measured on up to ``n_queries`` of them against exact search.
    """
    x = _as_matrix(vectors)
    n, dim = x.shape
    chosen = choose_kind(n, kind, flat_max_items)
    started = time.perf_counter()
    index = build_index(x, chosen, hnsw_m=hnsw_m, ef_construction=ef_construction, seed=seed)
    build_seconds = time.perf_counter() - started
    if chosen == "flat" or n == 0:
        report = AnnReport(kind=chosen, n_items=n, dim=dim, recall=1.0, recall_k=k, build_seconds=build_seconds)
        return index, report
    rng = np.random.default_rng(seed)
    pool = x if queries is None else _as_matrix(queries)
    pool = pool[np.abs(pool).sum(axis=1) > 0]  # a zero query ranks nothing and says nothing about recall
    if pool.shape[0] > n_queries:
        pool = pool[np.sort(rng.choice(pool.shape[0], n_queries, replace=False))]
    started = time.perf_counter()
    k_eff = min(k, n)
    truth = exact_top_k(x, pool, k_eff)
    params, recall = tune_index(index, pool, truth, target=target)
    tune_seconds = time.perf_counter() - started
    if chosen == "hnsw":
        params = {"M": hnsw_m, "efConstruction": ef_construction, **params}
    else:
        params = {"nlist": int(faiss.downcast_index(index).nlist), **params}
    report = AnnReport(
        kind=chosen,
        n_items=n,
        dim=dim,
        params=params,
        recall=float(recall),
        recall_k=k_eff,
        n_queries=int(pool.shape[0]),
        build_seconds=build_seconds,
        tune_seconds=tune_seconds,
    )
    return index, report


def neighbours_table(
    vectors: npt.ArrayLike, k: int, *, flat_max_items: int = FLAT_MAX_ITEMS, seed: int = 0
) -> tuple[npt.NDArray[np.int32], FloatMatrix]:
    """Every item's ``k`` nearest other items by inner product as ``(n, k)`` tables (-1 / 0 padded).

    Exact below ``flat_max_items``, HNSW above (with a generous ``efSearch``: this runs once per training).
    Neighbours with a non-positive score (e.g. items without any text) are not neighbours.
    """
    x = _as_matrix(vectors)
    n = x.shape[0]
    idx = np.full((n, k), -1, dtype=np.int32)
    score = np.zeros((n, k), dtype=np.float32)
    if n < 2 or k == 0:
        return idx, score
    kind = "flat" if n < flat_max_items else "hnsw"
    index = build_index(x, kind, seed=seed)
    apply_search_params(index, {"efSearch": max(2 * (k + 1), 128)})
    found_scores, found = index.search(x, min(k + 1, n))
    self_hit = found == np.arange(n)[:, None]
    # Drop each row's own entry (or, when the item was not returned, its last one) to keep k columns.
    drop = np.where(self_hit.any(axis=1), self_hit.argmax(axis=1), found.shape[1] - 1)
    keep = np.ones(found.shape, dtype=bool)
    keep[np.arange(n), drop] = False
    found = found[keep].reshape(n, -1)
    found_scores = found_scores[keep].reshape(n, -1)
    valid = (found >= 0) & (found_scores > 0)
    width = found.shape[1]
    idx[:, :width] = np.where(valid, found, -1)
    score[:, :width] = np.where(valid, found_scores, 0.0)
    return idx, score


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def read_index(path: Path, *, mmap: bool = True) -> faiss.Index:
    """Read an index; with ``mmap`` the vectors stay in the page cache, shared by every process on the host.

    ``IO_FLAG_MMAP_IFC`` maps flat code arrays (flat, and HNSW's storage); ``IO_FLAG_MMAP`` maps IVF lists.
    A build of faiss without them reads the index into memory instead.
    """
    if mmap:
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | getattr(faiss, "IO_FLAG_MMAP", 0)
        try:
            return faiss.read_index(str(path), flags)
        except RuntimeError:
            pass
    return faiss.read_index(str(path))
