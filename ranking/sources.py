"""The numeric core of every retrieval source: fitting (ALS, EASE, item-kNN, co-purchase, content, popularity,
trending) and scoring users' histories. Pure: numpy/scipy arrays in and out, no ORM, Redis or settings.

Conventions: items are indices into the model's item map; neighbour tables are dense ``(n_items, k)`` arrays,
``int32`` indices padded with ``-1`` and ``float32`` scores padded with ``0``; user-item matrices are CSR
``(n_users, n_items)`` with one entry per (user, item).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.sparse as sp

from events.features import RATING_MAX, RATING_MIN

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

# Interaction.Type values, repeated so this module stays importable without Django (checked in the tests).
VIEW, CLICK, ADD_TO_CART, PURCHASE, RATING = 1, 2, 3, 4, 5
SECONDS_PER_DAY = 86_400.0
_EASE_JITTER_ATTEMPTS = 4

__all__ = [
    "als_fit",
    "confidence",
    "content_fit",
    "decay",
    "dense_top_k",
    "ease_fit",
    "ease_lambda",
    "event_weights",
    "fbt_fit",
    "fold_in",
    "fold_in_batch",
    "history_confidences",
    "item_knn_fit",
    "neighbours_to_csr",
    "popularity",
    "sparse_top_k",
    "trending",
]


# --- Event weights --------------------------------------------------------------------------------------------


def event_weights(
    types: npt.ArrayLike,
    values: npt.ArrayLike,
    type_weights: Mapping[int, float],
    *,
    rating_base: float = 0.0,
    rating_per_point: float = 1.0,
) -> FloatArray:
    """How much one event says about interest: a fixed weight per type, ``base + per_point * value`` for ratings.

    Unknown types weigh 0 (a new event type is ignored until someone gives it a weight). A rating whose value is
    unknown (NaN: the online history keeps types and times, not values) weighs its type weight if one is set, else
    1: the customer rated the item, which says more than nothing (with weight 0 a ratings-only shop's histories
    folded into no user vector at all, so serving had no ALS candidates).
    """
    types = np.asarray(types, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    table = np.zeros(max(max(type_weights, default=0), RATING) + 1, dtype=np.float64)
    for type_, weight in type_weights.items():
        table[int(type_)] = weight
    weights = table[np.clip(types, 0, table.size - 1)]
    weights[(types < 0) | (types >= table.size)] = 0.0
    is_rating = types == RATING
    if is_rating.any():
        rating = values[is_rating]
        unknown = float(type_weights.get(RATING, 1.0))
        # Clipped to the documented range, as ingestion and the online affinities weigh it: a value stored before
        # that rule (1e308, -inf) must not make a training matrix infinite.
        known = np.clip(np.nan_to_num(rating), RATING_MIN, RATING_MAX)
        weighed = np.maximum(rating_base + rating_per_point * known, 0.0)
        weights[is_rating] = np.where(np.isnan(rating), unknown, weighed)
    return weights.astype(np.float32)


def decay(age_days: npt.ArrayLike, half_life_days: float | None) -> FloatArray:
    """``0.5 ** (age / half_life)``; ``None`` (or 0) switches decay off. Future events (age < 0) count fully."""
    age = np.maximum(np.asarray(age_days, dtype=np.float64), 0.0)
    if not half_life_days:
        return np.ones(age.shape, dtype=np.float32)
    return np.exp2(-age / half_life_days).astype(np.float32)


def confidence(weights: npt.ArrayLike, *, alpha: float, scaling: str = "linear", eps: float = 1.0) -> FloatArray:
    """iALS confidence ``c = 1 + alpha * f(w)`` (Hu, Koren, Volinsky 2008), ``f`` linear or ``log1p(w / eps)``.

    ``c >= 1`` for every observed entry, so an observed item never weighs less than an unobserved one.
    """
    w = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
    if scaling == "linear":
        scaled = w
    elif scaling == "log":
        scaled = np.log1p(w / eps)
    else:
        raise ValueError(f"unknown confidence scaling {scaling!r} (use 'linear' or 'log')")
    return (1.0 + alpha * scaled).astype(np.float32)


def history_confidences(
    item_idx: npt.ArrayLike,
    weights: npt.ArrayLike,
    *,
    aggregate: str,
    alpha: float,
    scaling: str,
    eps: float,
) -> tuple[IntArray, FloatArray]:
    """Per distinct item of a short history: aggregated weights turned into ALS confidences, ready for fold_in.

    ``weights`` are per event (type weight x decay); ``aggregate`` is the training rule ("max" or "sum").
    """
    items = np.asarray(item_idx, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    unique, inverse = np.unique(items, return_inverse=True)
    agg = np.zeros(unique.size, dtype=np.float64)
    if aggregate == "max":
        np.maximum.at(agg, inverse, w)
    elif aggregate == "sum":
        np.add.at(agg, inverse, w)
    else:
        raise ValueError(f"unknown aggregate {aggregate!r} (use 'max' or 'sum')")
    keep = agg > 0
    return unique[keep], confidence(agg[keep], alpha=alpha, scaling=scaling, eps=eps)


# --- Top-k helpers --------------------------------------------------------------------------------------------


def sparse_top_k(matrix: sp.spmatrix, k: int) -> tuple[npt.NDArray[np.int32], FloatArray]:
    """Row-wise top-``k`` of a sparse matrix's stored entries (positive values only) as dense padded tables.

    Ties keep the lower column index first, so results are deterministic.
    """
    m = sp.csr_matrix(matrix, dtype=np.float32)
    m.sum_duplicates()
    m.eliminate_zeros()
    n_rows = m.shape[0]
    idx = np.full((n_rows, k), -1, dtype=np.int32)
    score = np.zeros((n_rows, k), dtype=np.float32)
    if m.nnz == 0 or k == 0:
        return idx, score
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(m.indptr))
    positive = m.data > 0
    rows, cols, data = rows[positive], m.indices[positive], m.data[positive]
    # Primary key row, then descending score, then ascending column.
    order = np.lexsort((cols, -data, rows))
    rows, cols, data = rows[order], cols[order], data[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    rank = np.arange(rows.size) - starts[rows]
    keep = rank < k
    idx[rows[keep], rank[keep]] = cols[keep]
    score[rows[keep], rank[keep]] = data[keep]
    return idx, score


def neighbours_to_csr(idx: npt.ArrayLike, score: npt.ArrayLike, n_items: int) -> sp.csr_matrix:
    """A neighbour table back to a sparse ``(n_items, n_items)`` matrix, for scoring many users at once."""
    idx = np.asarray(idx)
    score = np.asarray(score, dtype=np.float32)
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1]).reshape(idx.shape)
    valid = idx >= 0
    return sp.csr_matrix((score[valid], (rows[valid], idx[valid])), shape=(idx.shape[0], n_items))


def dense_top_k(
    scores: npt.NDArray[np.floating],
    k: int,
    exclude: sp.csr_matrix | None = None,
    *,
    min_score: float = -np.inf,
    overwrite: bool = False,
) -> IntArray:
    """Top-``k`` columns of each row, best first, as an ``(n, k)`` int64 array padded with -1.

    Entries of ``exclude`` (same shape, e.g. the users' training items) and scores ``<= min_score`` are never
    returned: a sparse source with nothing to say pads instead of filling the list with arbitrary items.
    ``overwrite=True`` lets a caller that owns a float32 ``scores`` skip a copy (the array is then clobbered).
    """
    s = np.asarray(scores, dtype=np.float32)
    if (s is scores and not overwrite) or not s.flags.writeable:
        s = s.copy()
    n_rows, n_cols = s.shape
    if exclude is not None and exclude.nnz:
        ex = sp.csr_matrix(exclude)
        rows = np.repeat(np.arange(n_rows), np.diff(ex.indptr))
        s[rows, ex.indices] = -np.inf
    s[~(s > min_score)] = -np.inf
    k_eff = min(k, n_cols)
    out = np.full((n_rows, k), -1, dtype=np.int64)
    if k_eff == 0 or n_rows == 0:
        return out
    part = np.argpartition(-s, k_eff - 1, axis=1)[:, :k_eff]
    part_scores = np.take_along_axis(s, part, axis=1)
    # Stable sort on (-score, column) keeps results deterministic under ties.
    order = np.lexsort((part, -part_scores), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    out[:, :k_eff] = np.where(np.isfinite(top_scores), top, -1)
    return out


# --- ALS ------------------------------------------------------------------------------------------------------


def als_fit(
    confidences: sp.csr_matrix,
    *,
    factors: int,
    regularization: float,
    iterations: int,
    seed: int,
    num_threads: int = 0,
) -> tuple[FloatArray, FloatArray]:
    """iALS via ``implicit`` on a ``(n_users, n_items)`` confidence matrix (entries are ``c >= 1``).

    Returns ``(user_factors, item_factors)`` as float32. ``implicit``'s own ``alpha`` stays 1: confidences are
    computed by :func:`confidence`, the same function serving uses for fold-in.
    """
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    # implicit parallelises over users itself; a multi-threaded BLAS underneath only oversubscribes the cores.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=1.0,
            iterations=iterations,
            random_state=seed,
            num_threads=num_threads,
            dtype=np.float32,
        )
        model.fit(sp.csr_matrix(confidences, dtype=np.float32), show_progress=False)
    return np.ascontiguousarray(model.user_factors, np.float32), np.ascontiguousarray(model.item_factors, np.float32)


def fold_in(
    item_factors: npt.NDArray[np.floating],
    item_idx: npt.ArrayLike,
    confidences: npt.ArrayLike,
    reg: float,
    yty: npt.NDArray[np.floating] | None = None,
) -> FloatArray:
    """A fresh user vector from a short history: the standard iALS user solve with the item factors fixed,

    ``(YtY + Yu^T (Cu - I) Yu + reg I) x = Yu^T Cu p_u`` with ``p_u = 1`` on the history items.

    ``item_idx`` must be distinct (aggregate first, e.g. with :func:`history_confidences`); pass the stored
    ``yty`` to skip an ``O(n_items f^2)`` product on every call. An empty history gives the zero vector.
    """
    items = np.asarray(item_idx, dtype=np.int64)
    c = np.asarray(confidences, dtype=np.float64)
    n_factors = item_factors.shape[1]
    if items.size == 0:
        return np.zeros(n_factors, dtype=np.float32)
    if np.unique(items).size != items.size:
        raise ValueError("fold_in needs distinct item indices; aggregate repeated events first")
    if yty is None:
        y = np.asarray(item_factors, dtype=np.float64)
        yty = y.T @ y
    yu = np.asarray(item_factors[items], dtype=np.float64)
    a = np.asarray(yty, dtype=np.float64) + (yu.T * (c - 1.0)) @ yu
    a.flat[:: n_factors + 1] += reg  # + reg I, without building I
    b = yu.T @ c
    # A plain LU solve of an f x f system: a fraction of a millisecond, and no BLAS threading to contend for.
    return np.linalg.solve(a, b).astype(np.float32)


def fold_in_batch(
    item_factors: npt.NDArray[np.floating],
    confidences: sp.csr_matrix,
    reg: float,
    yty: npt.NDArray[np.floating] | None = None,
) -> FloatArray:
    """:func:`fold_in` for every row of a ``(n_users, n_items)`` confidence matrix (zero rows give zero vectors)."""
    from threadpoolctl import threadpool_limits

    c = sp.csr_matrix(confidences)
    if yty is None:
        y = np.asarray(item_factors, dtype=np.float64)
        yty = y.T @ y
    out = np.zeros((c.shape[0], item_factors.shape[1]), dtype=np.float32)
    # Thousands of f x f solves: BLAS threads only add hand-offs (and spin badly when the cores are busy).
    with threadpool_limits(1, "blas"):
        for row in range(c.shape[0]):
            lo, hi = c.indptr[row], c.indptr[row + 1]
            if hi > lo:
                out[row] = fold_in(item_factors, c.indices[lo:hi], c.data[lo:hi], reg, yty)
    return out


# --- EASE -----------------------------------------------------------------------------------------------------


def ease_lambda(matrix: sp.spmatrix, relative_lambda: float) -> float:
    """EASE's L2 weight scaled to the input: ``relative_lambda`` means the same on binary and on decayed weights.

    Steck's lambda (e.g. 200 on MovieLens) is in units of a binary matrix's Gram diagonal (item counts); with
    weighted entries the diagonal shrinks or grows, so lambda is multiplied by mean(diag(X^T X)) / mean(count).
    """
    m = sp.csr_matrix(matrix)
    counts = np.diff(m.tocsc().indptr)
    diag = np.asarray(m.multiply(m).sum(axis=0)).ravel()
    mean_count = counts.mean() if counts.size else 0.0
    return float(relative_lambda * (diag.mean() / mean_count if mean_count > 0 else 1.0))


def ease_fit(matrix: sp.spmatrix, l2: float) -> FloatArray:
    """EASE (Steck 2019): ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1`` and a zero diagonal.

    A user's scores are ``x_u @ B``. The inverse goes through a Cholesky factorisation (the Gram matrix plus
    ``l2 I`` is symmetric positive definite), half the work of a general inverse. Memory is ``O(n_items^2)``.
    """
    x = sp.csr_matrix(matrix, dtype=np.float64)
    n_items = x.shape[1]
    for attempt in range(_EASE_JITTER_ATTEMPTS):
        gram = (x.T @ x).toarray()
        # Mathematically X^T X + l2 I is positive definite for any l2 > 0; with a tiny l2 (weights decayed to
        # almost nothing) rounding can still break the factorisation, so l2 grows tenfold and it is tried again.
        floor = 1e-9 * max(float(gram.diagonal().max(initial=0.0)), 1.0)
        gram[np.diag_indices(n_items)] += max(l2, floor) * 10.0**attempt
        chol, info = scipy.linalg.lapack.dpotrf(gram, lower=False, overwrite_a=True)
        if info == 0:
            break
    else:
        raise np.linalg.LinAlgError(f"EASE: the Gram matrix is not positive definite (dpotrf info={info})")
    p, info = scipy.linalg.lapack.dpotri(chol, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inversion failed (dpotri info={info})")
    # dpotri fills the upper triangle only.
    p = np.triu(p) + np.triu(p, 1).T
    b = p / (-np.diag(p))
    b[np.diag_indices(n_items)] = 0.0
    return b.astype(np.float32)


# --- Item-kNN -------------------------------------------------------------------------------------------------


def item_knn_fit(
    matrix: sp.spmatrix,
    *,
    k: int,
    method: str = "bm25",
    bm25_k1: float = 1.2,
    bm25_b: float = 0.75,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.int32], FloatArray]:
    """Item-item similarity from co-occurrence (``implicit``'s cosine or BM25-weighted item-item), top ``k``.

    The item itself is never its own neighbour.
    """
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    if method == "bm25":
        model = BM25Recommender(K=k + 1, K1=bm25_k1, B=bm25_b, num_threads=num_threads)
    elif method == "cosine":
        model = CosineRecommender(K=k + 1, num_threads=num_threads)
    else:
        raise ValueError(f"unknown item-kNN method {method!r} (use 'bm25' or 'cosine')")
    m = sp.csr_matrix(matrix, dtype=np.float32)
    with warnings.catch_warnings():
        # implicit hands its own BM25-weighted COO matrix to its kNN and then warns about the conversion.
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(m, show_progress=False)
    sim = sp.csr_matrix(model.similarity)
    sim.setdiag(0)
    return sparse_top_k(sim, k)


# --- Frequently bought together -------------------------------------------------------------------------------


def fbt_fit(
    baskets: sp.spmatrix,
    *,
    k: int,
    min_count: int = 2,
    min_confidence: float = 0.01,
    min_lift: float = 1.0,
) -> tuple[npt.NDArray[np.int32], FloatArray, FloatArray]:
    """Association rules ``i -> j`` from a binary ``(n_baskets, n_items)`` matrix, top ``k`` per item.

    Kept when ``count(i, j) >= min_count``, ``confidence = count(i, j) / count(i) >= min_confidence`` and
    ``lift = confidence / P(j) >= min_lift`` (more often together than chance). Ranked by confidence, the
    "people who bought i also bought j" probability. Returns ``(idx, confidence, lift)``.
    """
    b = sp.csr_matrix(baskets, dtype=np.float32)
    b.data[:] = 1.0
    n_baskets, n_items = b.shape
    if n_baskets == 0:
        empty_idx = np.full((n_items, k), -1, np.int32)
        return empty_idx, np.zeros((n_items, k), np.float32), np.zeros((n_items, k), np.float32)
    co = sp.coo_matrix(b.T @ b)
    count_i = np.asarray(b.sum(axis=0)).ravel()
    off = co.row != co.col
    rows, cols, together = co.row[off], co.col[off], co.data[off]
    conf = together / count_i[rows]
    lift = conf * n_baskets / count_i[cols]
    keep = (together >= min_count) & (conf >= min_confidence) & (lift >= min_lift)
    rows, cols, conf = rows[keep], cols[keep], conf[keep]
    idx, score = sparse_top_k(sp.csr_matrix((conf, (rows, cols)), shape=(n_items, n_items)), k)
    # lift(i -> j) = confidence(i -> j) / P(j), recomputed for the kept pairs rather than looked up.
    # Only the kept slots are divided: a padding slot (-1) would read item 0's count, 0 for an item no basket holds.
    found = idx >= 0
    lift_table = np.zeros(idx.shape, np.float64)
    np.divide(score * n_baskets, count_i[np.maximum(idx, 0)], out=lift_table, where=found)
    return idx, score, lift_table.astype(np.float32)


# --- Content --------------------------------------------------------------------------------------------------


def content_fit(texts: Sequence[str], *, dims: int, seed: int, max_features: int = 50_000) -> FloatArray:
    """TF-IDF over each item's text (title, description, category, brand, tags), reduced by a truncated SVD
    (LSA) and L2-normalised, so a dot product is a cosine. Items without text get the zero vector.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    n = len(texts)
    if n == 0:
        return np.zeros((0, dims), dtype=np.float32)
    vectorizer = TfidfVectorizer(
        sublinear_tf=True,
        min_df=2 if n >= 50 else 1,
        max_df=0.5 if n >= 50 else 1.0,
        ngram_range=(1, 2),
        max_features=max_features,
        dtype=np.float32,
    )
    try:
        tfidf = vectorizer.fit_transform(texts)
    except ValueError:  # no token at all (empty texts): nothing to learn
        return np.zeros((n, dims), dtype=np.float32)
    n_components = min(dims, tfidf.shape[1] - 1, n - 1)
    out = np.zeros((n, dims), dtype=np.float32)
    if n_components < 1:
        dense = normalize(tfidf).toarray()[:, :dims]
        out[:, : dense.shape[1]] = dense
        return out
    svd = TruncatedSVD(n_components=n_components, algorithm="randomized", n_iter=7, random_state=seed)
    # On tiny catalogs the explained-variance ratio divides by zero; the vectors themselves are fine.
    with np.errstate(divide="ignore", invalid="ignore"):
        reduced = svd.fit_transform(tfidf)
    out[:, :n_components] = normalize(reduced).astype(np.float32)
    return out


# --- Popularity and trending ----------------------------------------------------------------------------------


def popularity(
    item_idx: npt.ArrayLike,
    weights: npt.ArrayLike,
    ts: npt.ArrayLike,
    *,
    reference_ts: float,
    half_life_days: float | None,
    n_items: int,
) -> FloatArray:
    """Time-decayed weighted event counts per item as of ``reference_ts``."""
    age = (reference_ts - np.asarray(ts, dtype=np.float64)) / SECONDS_PER_DAY
    w = np.asarray(weights, dtype=np.float64) * decay(age, half_life_days)
    return np.bincount(np.asarray(item_idx, dtype=np.int64), weights=w, minlength=n_items).astype(np.float32)


def trending(
    item_idx: npt.ArrayLike,
    weights: npt.ArrayLike,
    ts: npt.ArrayLike,
    *,
    reference_ts: float,
    recent_days: float,
    baseline_days: float,
    smoothing: float,
    n_items: int,
) -> FloatArray:
    """Recent rate against the long-run rate: ``(recent + s) / (expected + s)`` per item.

    ``recent`` is the weighted count of the last ``recent_days``; ``expected`` is what the preceding
    ``baseline_days`` predict for a window that long. The pseudo-count ``s`` keeps an item going from 0 to 1
    event from topping the list; 1.0 means "as usual", 3.0 "three times the usual rate".
    """
    ts = np.asarray(ts, dtype=np.float64)
    items = np.asarray(item_idx, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    age = (reference_ts - ts) / SECONDS_PER_DAY
    recent = (age >= 0) & (age < recent_days)
    baseline = (age >= recent_days) & (age < recent_days + baseline_days)
    recent_count = np.bincount(items[recent], weights=w[recent], minlength=n_items)
    baseline_count = np.bincount(items[baseline], weights=w[baseline], minlength=n_items)
    expected = baseline_count * (recent_days / baseline_days)
    return ((recent_count + smoothing) / (expected + smoothing)).astype(np.float32)
