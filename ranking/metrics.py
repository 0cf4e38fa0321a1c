"""Offline evaluation metrics for top-K recommendation lists: accuracy, coverage, diversity and novelty.

Conventions shared by every function here:

* ``recommended`` is an ``(n_users, K)`` integer array of item indices, best first. Any negative
  value is padding (``-1`` by convention) for lists shorter than ``K``. Only the first ``k``
  columns are evaluated; when ``K < k`` the missing columns count as padding.
* For the accuracy metrics an item repeated inside one list is counted once, at its first
  (best) position, so a duplicated hit cannot inflate a score.
* ``relevant[u]`` holds user ``u``'s relevant item indices (any order, duplicates and negative
  values ignored). A user with no relevant item has no defined accuracy: ``*_per_user``
  functions return ``NaN`` for them and the means skip them. If no user has a relevant item
  the means return ``0.0`` so a report never carries ``NaN``.

Definitions follow Microsoft Recommenders (``recommenders.evaluation.python_evaluation``) with
binary relevance:

* precision@k = hits / k (padding counts as a miss, so short lists are penalised);
* recall@k = hits / |rel| (not ``min(|rel|, k)``: a user with more relevant items than ``k``
  cannot reach 1.0);
* nDCG@k = sum_i hit_i / log2(i + 2) divided by the ideal DCG of ``min(|rel|, k)`` hits;
* MAP@k = sum_i hit_i * precision@(i + 1) divided by ``min(|rel|, k)``;
* hit rate@k = 1 if any of the first k items is relevant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from typing import cast

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Keys are user * stride + item; past this the int64 product could overflow.
_MAX_KEY = 2**62

__all__ = [
    "catalog_coverage",
    "evaluate_lists",
    "hit_matrix",
    "hit_rate_at_k",
    "hit_rate_at_k_per_user",
    "map_at_k",
    "map_at_k_per_user",
    "max_category_share_per_user",
    "mean_max_category_share",
    "ndcg_at_k",
    "ndcg_at_k_per_user",
    "novelty",
    "novelty_per_user",
    "precision_at_k",
    "precision_at_k_per_user",
    "recall_at_k",
    "recall_at_k_per_user",
]


def _top_k(recommended: npt.ArrayLike, k: int) -> IntArray:
    """Return the first ``k`` columns as int64, padded with -1 when the lists are shorter."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValueError(f"recommended must be a 2-D (n_users, K) array, got shape {rec.shape}")
    if rec.size and not np.issubdtype(rec.dtype, np.integer):
        raise ValueError(f"recommended must hold integer item indices, got dtype {rec.dtype}")
    rec = rec[:, :k].astype(np.int64, copy=False)
    if rec.shape[1] < k:
        rec = np.pad(rec, ((0, 0), (0, k - rec.shape[1])), constant_values=-1)
    return rec


def _first_occurrence(rec: IntArray) -> BoolArray:
    """Mask of non-padding entries that are the first occurrence of their item in their row."""
    # A stable sort keeps equal items in column order, so within each run of equal values only
    # the earliest column survives the "differs from the previous value" test.
    order = np.argsort(rec, axis=1, kind="stable")
    srt = np.take_along_axis(rec, order, axis=1)
    first_sorted = np.ones(rec.shape, dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    first = np.empty(rec.shape, dtype=bool)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first & (rec >= 0)


def _hits_and_counts(rec: IntArray, relevant: Sequence[npt.ArrayLike]) -> tuple[BoolArray, IntArray]:
    """Boolean hit matrix for ``rec`` and the number of distinct relevant items per user."""
    n_users = rec.shape[0]
    if len(relevant) != n_users:
        raise ValueError(f"relevant has {len(relevant)} users but recommended has {n_users}")
    if n_users == 0:
        return np.zeros(rec.shape, dtype=bool), np.zeros(0, dtype=np.int64)

    # One flat array of (user, item) pairs lets a single sorted search replace n_users set lookups.
    lengths = np.fromiter((len(cast(Sized, r)) for r in relevant), dtype=np.int64, count=n_users)
    rel_items = np.concatenate(relevant).astype(np.int64, copy=False)
    rel_users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    keep = rel_items >= 0
    rel_items, rel_users = rel_items[keep], rel_users[keep]

    max_item = max(int(rec.max(initial=-1)), int(rel_items.max(initial=-1)))
    stride = max_item + 1 if max_item >= 0 else 1
    if n_users * stride >= _MAX_KEY:
        raise ValueError("n_users * n_items too large to encode (user, item) pairs in int64")

    rel_keys = np.unique(rel_users * stride + rel_items)
    n_rel = np.bincount(rel_keys // stride, minlength=n_users).astype(np.int64)
    if rel_keys.size == 0:
        return np.zeros(rec.shape, dtype=bool), n_rel

    rec_keys = np.arange(n_users, dtype=np.int64)[:, None] * stride + rec
    pos = np.searchsorted(rel_keys, rec_keys)
    found = rel_keys[np.minimum(pos, rel_keys.size - 1)] == rec_keys
    hits = found & (pos < rel_keys.size) & _first_occurrence(rec)
    return hits, n_rel


def hit_matrix(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> BoolArray:
    """``(n_users, k)`` mask: True where the item at that rank is relevant to that user."""
    hits, _ = _hits_and_counts(_top_k(recommended, k), relevant)
    return hits


def _masked_mean(per_user: FloatArray) -> float:
    defined = ~np.isnan(per_user)
    return float(per_user[defined].mean()) if defined.any() else 0.0


def _undefined_where_no_relevant(values: FloatArray, n_rel: IntArray) -> FloatArray:
    return np.where(n_rel > 0, values, np.nan)


def _precision(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    return _undefined_where_no_relevant(hits.sum(axis=1) / hits.shape[1], n_rel)


def _recall(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return _undefined_where_no_relevant(hits.sum(axis=1) / n_rel, n_rel)


def _ndcg(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    k = hits.shape[1]
    discount = 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)
    dcg = hits @ discount
    ideal_hits = np.minimum(n_rel, k)
    # ideal_dcg[n] is the DCG of n hits in the top n positions; ideal_dcg[0] = 0 is never divided by.
    ideal_dcg = np.concatenate(([np.inf], np.cumsum(discount)))
    return _undefined_where_no_relevant(dcg / ideal_dcg[ideal_hits], n_rel)


def _average_precision(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    k = hits.shape[1]
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    summed = (precision_at_rank * hits).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _undefined_where_no_relevant(np.asarray(summed / np.minimum(n_rel, k), np.float64), n_rel)


def _hit_rate(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    return _undefined_where_no_relevant(np.asarray(hits.any(axis=1), dtype=np.float64), n_rel)


def precision_at_k_per_user(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> FloatArray:
    """Per-user hits in the first ``k`` / ``k`` (NaN for users without relevant items)."""
    rec = _top_k(recommended, k)
    return _precision(*_hits_and_counts(rec, relevant))


def precision_at_k(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> float:
    """Mean precision@k over users with at least one relevant item."""
    return _masked_mean(precision_at_k_per_user(recommended, relevant, k))


def recall_at_k_per_user(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> FloatArray:
    """Per-user hits in the first ``k`` / number of relevant items (NaN without relevant items)."""
    rec = _top_k(recommended, k)
    return _recall(*_hits_and_counts(rec, relevant))


def recall_at_k(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> float:
    """Mean recall@k (hits / |relevant|) over users with at least one relevant item."""
    return _masked_mean(recall_at_k_per_user(recommended, relevant, k))


def ndcg_at_k_per_user(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> FloatArray:
    """Per-user binary nDCG@k with a log2 discount (NaN for users without relevant items)."""
    rec = _top_k(recommended, k)
    return _ndcg(*_hits_and_counts(rec, relevant))


def ndcg_at_k(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> float:
    """Mean binary nDCG@k over users with at least one relevant item."""
    return _masked_mean(ndcg_at_k_per_user(recommended, relevant, k))


def map_at_k_per_user(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> FloatArray:
    """Per-user average precision@k normalised by ``min(|relevant|, k)`` (NaN without relevant)."""
    rec = _top_k(recommended, k)
    return _average_precision(*_hits_and_counts(rec, relevant))


def map_at_k(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> float:
    """Mean average precision@k over users with at least one relevant item."""
    return _masked_mean(map_at_k_per_user(recommended, relevant, k))


def hit_rate_at_k_per_user(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> FloatArray:
    """Per-user 1.0 if any of the first ``k`` items is relevant, else 0.0 (NaN without relevant)."""
    rec = _top_k(recommended, k)
    return _hit_rate(*_hits_and_counts(rec, relevant))


def hit_rate_at_k(recommended: npt.ArrayLike, relevant: Sequence[npt.ArrayLike], k: int) -> float:
    """Share of users (with at least one relevant item) who got at least one hit in the first ``k``."""
    return _masked_mean(hit_rate_at_k_per_user(recommended, relevant, k))


def catalog_coverage(recommended: npt.ArrayLike, n_items: int) -> float:
    """Distinct items recommended to anyone (padding ignored) / ``n_items``.

    Pass ``recommended[:, :k]`` for coverage@k; ``evaluate_lists`` does this itself.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    rec = np.asarray(recommended, dtype=np.int64)
    items = rec[rec >= 0]
    if items.size and int(items.max()) >= n_items:
        raise ValueError(f"item index {int(items.max())} is outside the catalog of {n_items} items")
    seen = np.zeros(n_items, dtype=bool)
    seen[items] = True
    return float(np.count_nonzero(seen) / n_items)


def max_category_share_per_user(recommended: npt.ArrayLike, item_category: npt.ArrayLike) -> FloatArray:
    """Per list: count of its most frequent category / number of (non-padding) items in it.

    1/len(list) means every item has a different category, 1.0 means a single category; lower is
    more diverse. Empty lists are NaN. Every value of ``item_category`` (including ``-1``) is
    treated as a category of its own.
    """
    rec = np.asarray(recommended, dtype=np.int64)
    if rec.ndim != 2:
        raise ValueError(f"recommended must be a 2-D (n_users, K) array, got shape {rec.shape}")
    categories = np.asarray(item_category, dtype=np.int64)
    valid = rec >= 0
    cats = np.where(valid, categories[np.where(valid, rec, 0)], 0)
    n_cols = rec.shape[1]
    if n_cols == 0:
        return np.full(rec.shape[0], np.nan)

    # Sort each row with real items first and grouped by category; the longest run of equal
    # categories among real items is the most frequent category's count.
    order = np.lexsort((cats, ~valid), axis=-1)
    srt = np.take_along_axis(cats, order, axis=1)
    srt_valid = np.take_along_axis(valid, order, axis=1)
    run_start = np.ones(rec.shape, dtype=bool)
    run_start[:, 1:] = (srt[:, 1:] != srt[:, :-1]) | (srt_valid[:, 1:] != srt_valid[:, :-1])
    col = np.broadcast_to(np.arange(n_cols), rec.shape)
    start_col = np.maximum.accumulate(np.where(run_start, col, 0), axis=1)
    run_length = np.where(srt_valid, col - start_col + 1, 0)

    n_valid = valid.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_valid > 0, run_length.max(axis=1) / n_valid, np.nan)


def mean_max_category_share(recommended: npt.ArrayLike, item_category: npt.ArrayLike) -> float:
    """Mean over non-empty lists of the most frequent category's share of the list (lower = more diverse)."""
    return _masked_mean(max_category_share_per_user(recommended, item_category))


def novelty_per_user(recommended: npt.ArrayLike, item_popularity: npt.ArrayLike, n_users: int) -> FloatArray:
    """Per list: mean self-information ``-log2(pop_i / n_users)`` of its items (NaN when empty).

    ``item_popularity[i]`` is the number of users who interacted with item ``i``. Popularity is
    clipped to ``[1, n_users]``: an item nobody interacted with would otherwise be infinitely
    novel, so it gets the finite maximum ``log2(n_users)``, and counts above ``n_users`` (from a
    different window) cannot make novelty negative.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    rec = np.asarray(recommended, dtype=np.int64)
    if rec.ndim != 2:
        raise ValueError(f"recommended must be a 2-D (n_users, K) array, got shape {rec.shape}")
    popularity = np.asarray(item_popularity, dtype=np.float64)
    valid = rec >= 0
    pop = np.clip(popularity[np.where(valid, rec, 0)], 1.0, float(n_users))
    info = np.where(valid, -np.log2(pop / n_users), 0.0)
    n_valid = valid.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_valid > 0, info.sum(axis=1) / n_valid, np.nan)


def novelty(recommended: npt.ArrayLike, item_popularity: npt.ArrayLike, n_users: int) -> float:
    """Mean over non-empty lists of the mean self-information of their items (Zhou et al. 2010)."""
    return _masked_mean(novelty_per_user(recommended, item_popularity, n_users))


def evaluate_lists(
    recommended: npt.ArrayLike,
    relevant: Sequence[npt.ArrayLike],
    k: int,
    n_items: int,
    item_category: npt.ArrayLike,
    item_popularity: npt.ArrayLike,
    n_users: int,
) -> dict[str, float]:
    """All metrics for the first ``k`` items of every list, keyed e.g. ``"ndcg@10"``.

    ``n_users`` is the population behind ``item_popularity`` (for novelty), not necessarily the
    number of evaluated lists. ``coverage@k``, ``max_category_share`` and ``novelty`` use every
    list, including those of users without relevant items.
    """
    rec = _top_k(recommended, k)
    hits, n_rel = _hits_and_counts(rec, relevant)
    return {
        f"precision@{k}": _masked_mean(_precision(hits, n_rel)),
        f"recall@{k}": _masked_mean(_recall(hits, n_rel)),
        f"ndcg@{k}": _masked_mean(_ndcg(hits, n_rel)),
        f"map@{k}": _masked_mean(_average_precision(hits, n_rel)),
        f"hit_rate@{k}": _masked_mean(_hit_rate(hits, n_rel)),
        f"coverage@{k}": catalog_coverage(rec, n_items),
        "max_category_share": mean_max_category_share(rec, item_category),
        "novelty": novelty(rec, item_popularity, n_users),
    }


# --- Two questions, weighed alike ---------------------------------------------------------------------------------


def nan_mean(values: npt.ArrayLike) -> float:
    """The mean over defined (finite) values; 0 when none is."""
    array = np.asarray(values, np.float64)
    return float(np.nanmean(array)) if np.isfinite(array).any() else 0.0


def balanced(by_question: Mapping[str, float]) -> float:
    """The geometric mean of the questions' NDCG@k: each question weighs the same in proportion (a 10% loss on one
    needs more than a 10% gain on the other), whatever their scales or how many items answer each."""
    values = np.asarray(list(by_question.values()), np.float64)
    return float(np.exp(np.log(np.maximum(values, 1e-12)).mean())) if values.size else 0.0


def balanced_per_user(per_question: Mapping[str, Mapping[str, npt.NDArray[np.float64]]]) -> dict[str, FloatArray]:
    """Per mode, each user's NDCG@k on the questions they answer, each divided by that question's mean over all modes
    and users (one scale per question, shared by the modes, so a comparison of two modes stays paired user by user),
    averaged over the user's questions and brought back to NDCG@k's unit (times the scales' geometric mean): what the
    serve choice and the ranker's ship rule compare when validation asks two questions, weighing them as
    :func:`balanced` does."""
    questions = sorted({q for values in per_question.values() for q in values})
    scales = {
        q: max(nan_mean(np.concatenate([values[q] for values in per_question.values()])), 1e-12) for q in questions
    }
    unit = balanced(scales)
    out: dict[str, FloatArray] = {}
    for mode, values in per_question.items():
        stacked = np.vstack([values[q] / scales[q] for q in questions])
        answered = np.isfinite(stacked).any(axis=0)
        out[mode] = np.full(stacked.shape[1], np.nan)
        out[mode][answered] = unit * np.nanmean(stacked[:, answered], axis=0)
    return out
