"""Plain top-K baselines, splits and list metrics on in-memory arrays: no Django, no database, nothing of ours.

Everything works on integer indices: users ``0..n_users-1``, items ``0..n_items-1``. A training part is a binary
``(n_users, n_items)`` CSR matrix (1 where the user has the item); a list is a row of an ``(n_users, k)`` int64
array, best first, ``-1`` where a list is shorter. Every baseline leaves out the items the user already has in
training (they are never relevant), exactly as ``filter_already_liked_items`` does in ``implicit``.

Baselines (``baseline_lists``): popularity count (distinct training users per item), BM25 item-kNN
(``implicit.nearest_neighbours.BM25Recommender`` with the library's defaults: K=20, K1=1.2, B=0.75), ``implicit``
ALS (64 factors, the library's defaults otherwise, a fixed random_state) and EASE (Steck 2019) with lambda chosen
on a validation split carved from the training part (``choose_ease_lambda``).

Metrics follow ``ranking/metrics.py`` (Microsoft Recommenders' definitions, binary relevance): NDCG@k = DCG of
the hits over the ideal DCG of ``min(|rel|, k)`` hits; hit rate@k = any hit; users without a relevant item are
left out of both means. Coverage = distinct listed items / catalog items. Max category share = the mean, over
non-empty lists, of the share of the list taken by its most frequent category.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

EASE_LAMBDAS: tuple[float, ...] = (10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
SEED = 42


# --- Splits ---------------------------------------------------------------------------------------------------


def per_user_random_holdout(user: IntArray, item: IntArray, *, fraction: float, seed: int) -> BoolArray:
    """Each user's distinct items shuffled, ``round(fraction * n)`` of them (at most n - 1, none for a user with a
    single item) held out with all their events. Returns the test mask over the events."""
    n_items = int(item.max()) + 1
    key = user.astype(np.int64) * n_items + item
    pairs = np.unique(key)
    pair_user = pairs // n_items
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(pairs.size), pair_user))
    return _hold_out_tail(key, pairs[order], pair_user[order], fraction)


def per_user_temporal_holdout(user: IntArray, item: IntArray, ts: FloatArray, *, fraction: float) -> BoolArray:
    """Each user's distinct items in the order of their first event (ties broken by item index), the last
    ``round(fraction * n)`` (at most n - 1) held out with all their events. Returns the test mask."""
    n_items = int(item.max()) + 1
    key = user.astype(np.int64) * n_items + item
    by_key = np.argsort(key, kind="stable")
    starts = _run_starts(key[by_key])
    pairs = key[by_key][starts]
    first_ts = np.minimum.reduceat(ts[by_key], starts)
    pair_user = pairs // n_items
    order = np.lexsort((pairs % n_items, first_ts, pair_user))
    return _hold_out_tail(key, pairs[order], pair_user[order], fraction, from_end=True)


def global_temporal_holdout(ts: FloatArray, *, days: float) -> tuple[BoolArray, float]:
    """Events at or after ``latest - days`` are the test part. Returns (test mask, cutoff timestamp)."""
    cutoff = float(ts.max()) - days * 86_400.0
    return ts >= cutoff, cutoff


def _run_starts(sorted_keys: IntArray) -> IntArray:
    return np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))


def _hold_out_tail(
    key: IntArray, ordered_pairs: IntArray, ordered_users: IntArray, fraction: float, *, from_end: bool = False
) -> BoolArray:
    counts = np.bincount(ordered_users)
    n_test = np.where(counts >= 2, np.minimum(np.rint(fraction * counts), counts - 1), 0).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(ordered_pairs.size) - starts[ordered_users]
    if from_end:
        rank = counts[ordered_users] - 1 - rank
    test_pairs = ordered_pairs[rank < n_test[ordered_users]]
    return np.isin(key, test_pairs)


# --- The evaluation task --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """One split on index arrays: the training matrix, the test users (rows of it) and their relevant items
    (held-out items the user does not have in training)."""

    train: sp.csr_matrix
    users: IntArray
    relevant: list[IntArray]

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])


def binary_matrix(user: IntArray, item: IntArray, n_users: int, n_items: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(user.size, np.float32), (user, item)), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def make_task(
    user: IntArray, item: IntArray, test: BoolArray, n_users: int, n_items: int, *, require_history: bool = True
) -> Task:
    """Train on the events outside ``test``; test users are the users with a held-out event (and, with
    ``require_history``, at least one training event). Users whose held-out items are all in training still
    count as test users (served, listed) but have no defined NDCG or hit rate."""
    train = binary_matrix(user[~test], item[~test], n_users, n_items)
    has_history = np.diff(train.indptr) > 0
    test_users = np.unique(user[test])
    if require_history:
        test_users = test_users[has_history[test_users]]
    position = {int(u): n for n, u in enumerate(test_users)}
    buckets: list[set[int]] = [set() for _ in test_users]
    for u, i in zip(user[test].tolist(), item[test].tolist(), strict=True):
        n = position.get(u)
        if n is not None:
            buckets[n].add(i)
    relevant = []
    for n, u in enumerate(test_users):
        seen = set(train.indices[train.indptr[u] : train.indptr[u + 1]].tolist())
        relevant.append(np.array(sorted(buckets[n] - seen), dtype=np.int64))
    return Task(train, test_users.astype(np.int64), relevant)


# --- Metrics --------------------------------------------------------------------------------------------------


def _hits(lists: IntArray, relevant: Sequence[IntArray], k: int) -> tuple[BoolArray, IntArray]:
    top = lists[:, :k]
    hits = np.zeros(top.shape, dtype=bool)
    for row, (items, rel) in enumerate(zip(top, relevant, strict=True)):
        seen: set[int] = set()
        rel_set = set(rel.tolist())
        for col, i in enumerate(items.tolist()):
            if i >= 0 and i not in seen:
                hits[row, col] = i in rel_set
                seen.add(i)
    return hits, np.fromiter((len(r) for r in relevant), dtype=np.int64, count=len(relevant))


def ndcg_at_k(lists: IntArray, relevant: Sequence[IntArray], k: int = 10) -> float:
    hits, n_rel = _hits(lists, relevant, k)
    defined = n_rel > 0
    if not defined.any():
        return 0.0
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = hits @ discount[: hits.shape[1]]
    ideal = np.concatenate(([0.0], np.cumsum(discount)))[np.minimum(n_rel, k)]
    return float((dcg[defined] / ideal[defined]).mean())


def hit_rate_at_k(lists: IntArray, relevant: Sequence[IntArray], k: int = 10) -> float:
    hits, n_rel = _hits(lists, relevant, k)
    defined = n_rel > 0
    return float(hits[defined].any(axis=1).mean()) if defined.any() else 0.0


def catalog_coverage(lists: IntArray, n_items: int, k: int = 10) -> float:
    listed = np.unique(lists[:, :k])
    return float((listed >= 0).sum() / n_items)


def mean_max_category_share(lists: IntArray, category: IntArray, k: int = 10) -> float:
    """Mean over non-empty lists of (count of the list's most frequent category) / (list length)."""
    shares = []
    for items in lists[:, :k]:
        items = items[items >= 0]
        if items.size:
            shares.append(np.bincount(category[items]).max() / items.size)
    return float(np.mean(shares)) if shares else 0.0


def seen_share(lists: IntArray, train: sp.csr_matrix, users: IntArray, k: int = 10) -> float:
    """Share of the listed slots taken by items the user already has in training (never relevant)."""
    listed = seen = 0
    for row, u in enumerate(users.tolist()):
        items = lists[row, :k]
        items = items[items >= 0]
        have = train.indices[train.indptr[u] : train.indptr[u + 1]]
        listed += items.size
        seen += int(np.isin(items, have).sum())
    return seen / listed if listed else 0.0


def list_metrics(lists: IntArray, task: Task, category: IntArray, k: int = 10) -> dict[str, float]:
    return {
        "ndcg@10": ndcg_at_k(lists, task.relevant, k),
        "hit_rate@10": hit_rate_at_k(lists, task.relevant, k),
        "coverage@10": catalog_coverage(lists, task.n_items, k),
        "max_category_share": mean_max_category_share(lists, category, k),
        "seen_share": seen_share(lists, task.train, task.users, k),
    }


# --- Baselines ------------------------------------------------------------------------------------------------


def top_k_unseen(scores: FloatArray, seen: sp.csr_matrix, k: int) -> IntArray:
    """The ``k`` best-scoring items per row of ``scores``, leaving out the items set in ``seen`` (same rows)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows, cols = seen.nonzero()
    scores[rows, cols] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1).astype(np.int64)
    best[~np.isfinite(np.take_along_axis(scores, best, axis=1))] = -1
    return best


def _in_blocks(task: Task, k: int, scores_of: Callable[[IntArray, sp.csr_matrix], FloatArray]) -> IntArray:
    out = []
    for start in range(0, task.users.size, 2048):
        users = task.users[start : start + 2048]
        seen = task.train[users]
        out.append(top_k_unseen(scores_of(users, seen), seen, k))
    return np.vstack(out) if out else np.empty((0, k), np.int64)


def popularity_lists(task: Task, k: int = 10) -> IntArray:
    """Most training users first (ties: lower index first)."""
    counts = np.asarray(task.train.sum(axis=0)).ravel().astype(np.float64)
    return _in_blocks(task, k, lambda users, _: np.broadcast_to(counts, (users.size, counts.size)))


def _implicit_lists(model: object, task: Task, k: int) -> IntArray:
    seen = task.train[task.users]
    ids, scores = model.recommend(task.users, seen, N=k, filter_already_liked_items=True)  # type: ignore[attr-defined]
    ids = np.asarray(ids, dtype=np.int64)
    ids[~np.isfinite(np.asarray(scores))] = -1
    return ids


def bm25_knn_lists(task: Task, k: int = 10) -> IntArray:
    """``implicit.nearest_neighbours.BM25Recommender`` with its defaults (K=20, K1=1.2, B=0.75)."""
    from implicit.nearest_neighbours import BM25Recommender
    from implicit.utils import ParameterWarning

    model = BM25Recommender()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParameterWarning)  # its own BM25 weighting hands fit() a COO matrix
        model.fit(task.train, show_progress=False)
    return _implicit_lists(model, task, k)


def als_lists(task: Task, k: int = 10, factors: int = 64, seed: int = SEED) -> IntArray:
    """``implicit`` ALS with ``factors`` factors, the library's defaults otherwise (regularization 0.01, alpha 1,
    15 iterations), BLAS single-threaded as implicit asks."""
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, random_state=seed)
        model.fit(task.train, show_progress=False)
        return _implicit_lists(model, task, k)


def ease_weights(train: sp.csr_matrix, lam: float) -> FloatArray:
    """EASE: B = I - P / diag(P) with P = (X'X + lam I)^-1 (zero diagonal)."""
    gram = (train.T @ train).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b


def ease_lists(task: Task, lam: float, k: int = 10, weights: FloatArray | None = None) -> IntArray:
    b = ease_weights(task.train, lam) if weights is None else weights
    return _in_blocks(task, k, lambda _, seen: np.asarray(seen @ b))


def choose_ease_lambda(
    validation: Task, lambdas: Sequence[float] = EASE_LAMBDAS, k: int = 10
) -> tuple[float, dict[float, float]]:
    """The lambda with the best validation NDCG@k (and every candidate's figure)."""
    figures = {lam: ndcg_at_k(ease_lists(validation, lam, k), validation.relevant, k) for lam in lambdas}
    return max(figures, key=figures.__getitem__), figures


BASELINES = ("popularity count", "BM25 item-kNN", "implicit ALS 64", "EASE")


def baseline_lists(
    task: Task, validation: Task, k: int = 10, depth: int | None = None
) -> tuple[dict[str, IntArray], float, dict[float, float]]:
    """Every baseline's lists for ``task`` (``depth`` long, default ``k``: a longer list lets
    :func:`category_capped` fill ``k`` slots under a cap), EASE's lambda chosen on ``validation`` and every
    candidate's validation NDCG@k."""
    lam, figures = choose_ease_lambda(validation, k=k)
    n = max(k, depth or k)
    lists = {
        "popularity count": popularity_lists(task, n),
        "BM25 item-kNN": bm25_knn_lists(task, n),
        "implicit ALS 64": als_lists(task, n),
        "EASE": ease_lists(task, lam, n),
    }
    return lists, lam, figures


def category_capped(lists: IntArray, category: IntArray, k: int, max_share: float) -> IntArray:
    """The first ``k`` entries of each ranked list that keep every category at ``floor(max_share * k)`` slots or
    fewer (the served lists' diversity cap, ``VariantConfig.diversity_cap``), in the list's order: a plain
    baseline re-ranked by the same rule the API applies. Items of unknown category (−1) are not capped; a list too
    short to fill ``k`` slots is padded with −1."""
    limit = max(1, int(max_share * k))
    out = np.full((lists.shape[0], k), -1, np.int64)
    for row, ranked in enumerate(lists.tolist()):
        used: dict[int, int] = {}
        filled = 0
        for item in ranked:
            if item < 0:
                continue
            c = int(category[item])
            if c >= 0:
                if used.get(c, 0) >= limit:
                    continue
                used[c] = used.get(c, 0) + 1
            out[row, filled] = item
            filled += 1
            if filled == k:
                break
    return out
