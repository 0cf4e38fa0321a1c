"""The serving pipeline's hottest loops compiled to machine code (numba): retrieval's neighbour aggregation, EASE's
dense top k and the merge of the sources' hits, and the re-ranker's greedy diversity fill. Pure: numpy arrays in,
numpy arrays out; ``ranking.retrieval`` and ``ranking.rerank`` wrap them (and check what numba does not: indices
within bounds).

Why compiled: a request aggregates three neighbour tables and merges eight sources over a few thousand entries,
and in numpy each step is a dozen array calls whose fixed cost (a few µs each) is most of the time: 70 µs an
aggregation on the demo against 21 µs here, same results bit for bit (issue 18's whole-request profile;
``tests/ranking/test_kernels.py`` checks them against the numpy versions they replace).

They are compiled on first use and cached on disk next to this file (numba's ``cache=True``; another process loads
the machine code in a fraction of a second); ``warm()`` does it at a web process's start so no request pays for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

logger = logging.getLogger(__name__)


def _compiled(function: Callable[..., Any]) -> Any:
    """``numba.njit`` with the disk cache where there is a writable place for it (next to this file, or
    ``NUMBA_CACHE_DIR``, or the user's cache directory); on a read-only install without one (numba then refuses
    ``cache=True`` outright), compiled in each process instead."""
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError:
        logger.warning("numba_cache_unavailable", extra={"function": function.__qualname__})
        return njit(nogil=True)(function)


_GOLDEN = np.uint64(11400714819323198485)  # 2**64 / golden ratio: multiplicative hashing (Knuth)


@_compiled
def _slot(item: int, mask: int) -> np.int64:
    return np.int64((np.uint64(item) * _GOLDEN) >> np.uint64(32)) & mask


@_compiled
def neighbour_sums(
    anchors: NDArray[np.int64],
    weights: NDArray[np.float32],
    neighbour_idx: NDArray[np.integer],
    neighbour_score: NDArray[np.floating],
    exclude: NDArray[np.bool_],
    k: int,
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """The ``k`` items with the largest weighted similarity sums over the anchors' neighbour lists.

    An item's sum adds ``float32(score) * weights[i]`` over every anchor ``i`` listing it, in anchor order, in float64
    (then float32); the anchors themselves and items with ``exclude[item]`` are left out (``exclude`` may be
    empty); −1 pads the tables. Order: sum descending, ties to the smaller item index. Returns (items, sums, the
    anchor position of each item's strongest single contribution, ties to the earlier anchor).

    The sums are kept in arrays indexed by item when the table's catalog is no larger than the hash table the
    entries would need (the demo's 3,825 items against 20 anchors x 100 neighbours: a few pages instead of about
    half a megabyte to allocate and probe per table), else in an open-addressing hash; both give the same result
    bit for bit (same sums in the same order, same first-seen order).
    """
    n = anchors.size * neighbour_idx.shape[1]
    size = 16
    while size < 2 * n:
        size <<= 1
    n_items = neighbour_idx.shape[0]
    dense = n_items <= size
    items, values, where, q = _aggregate(
        anchors, weights, neighbour_idx, neighbour_score, exclude, n_items if dense else size, dense
    )
    return _top_of_sums(items, values, where, q, k)


@_compiled
def _aggregate(
    anchors: NDArray[np.int64],
    weights: NDArray[np.float32],
    neighbour_idx: NDArray[np.integer],
    neighbour_score: NDArray[np.floating],
    exclude: NDArray[np.bool_],
    size: int,
    dense: bool,
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64], int]:
    """:func:`neighbour_sums`' aggregation: (items in first-seen order, their sums, their strongest anchor's position,
    how many), in ``size`` slots. An item's slot is the item itself when ``dense`` (``size`` is the catalog: an index
    past it cannot be an item and is skipped like the padding), else its multiplicative hash (``size`` a power of
    two at least twice the entries; open addressing, linear probing, which a dense slot never needs)."""
    n_anchors = anchors.size
    width = neighbour_idx.shape[1]
    mask = size - 1
    keys = np.full(size, -1, np.int64)
    sums = np.empty(size, np.float64)
    strongest = np.empty(size, np.float32)
    position = np.empty(size, np.int64)
    used = np.empty(min(n_anchors * width, size), np.int64)
    m = 0
    for i in range(n_anchors):
        row = anchors[i]
        weight = weights[i]
        for j in range(width):
            item = np.int64(neighbour_idx[row, j])
            if item < 0 or (dense and item >= size):
                continue
            contribution = np.float32(neighbour_score[row, j]) * weight
            h = item if dense else _slot(item, mask)
            while keys[h] != -1 and keys[h] != item:
                h = (h + 1) & mask
            if keys[h] == -1:
                keys[h] = item
                sums[h] = np.float64(contribution)
                strongest[h] = contribution
                position[h] = i
                used[m] = h
                m += 1
            else:
                sums[h] += np.float64(contribution)
                if contribution > strongest[h]:
                    strongest[h] = contribution
                    position[h] = i
    for i in range(n_anchors):  # never recommend an anchor back: mark it removed, its probe chain intact
        item = anchors[i]
        if dense:
            if keys[item] == item:
                keys[item] = -2
            continue
        h = _slot(item, mask)
        while keys[h] != -1:
            if keys[h] == item:
                keys[h] = -2
                break
            h = (h + 1) & mask
    items = np.empty(m, np.int64)
    values = np.empty(m, np.float32)
    where = np.empty(m, np.int64)
    q = 0
    for s in range(m):
        h = used[s]
        item = keys[h]
        if item < 0 or (exclude.size > 0 and exclude[item]):
            continue
        items[q] = item
        values[q] = np.float32(sums[h])
        where[q] = position[h]
        q += 1
    return items, values, where, q


@_compiled
def _top_of_sums(
    items: NDArray[np.int64], values: NDArray[np.float32], where: NDArray[np.int64], q: int, k: int
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """The ``k`` best of the first ``q`` aggregated items: sum descending, ties to the smaller item."""
    if q == 0 or k <= 0:
        return items[:0], values[:0], where[:0]
    k = min(k, q)
    cut = -np.partition(-values[:q], k - 1)[k - 1]
    chosen = np.flatnonzero(values[:q] >= cut)  # the k best and any tied with the k-th
    by_item = chosen[np.argsort(items[chosen], kind="mergesort")]
    top = by_item[np.argsort(-values[by_item], kind="mergesort")][:k]  # sum descending, ties to the smaller item
    return items[top], values[top], where[top]


@_compiled
def dense_top(
    total: NDArray[np.float32],
    rows: NDArray[np.float32],
    weights: NDArray[np.float32],
    anchors: NDArray[np.int64],
    k: int,
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """The ``k`` best items of a dense score vector ``total`` (``weights @ rows``, the anchors' rows of a full
    item-item matrix): positive scores only, the anchors left out; sum descending, ties to the smaller item. Returns
    (items, scores, the anchor position of each item's strongest weighted contribution, ties to the earlier anchor)."""
    n = total.size
    is_anchor = np.zeros(n, np.bool_)
    for i in range(anchors.size):
        is_anchor[anchors[i]] = True
    positive = np.empty(n, np.int64)
    q = 0
    for item in range(n):
        if total[item] > 0 and not is_anchor[item]:
            positive[q] = item
            q += 1
    if q == 0 or k <= 0:
        return positive[:0], total[:0], positive[:0]
    values = total[positive[:q]]
    k = min(k, q)
    cut = -np.partition(-values, k - 1)[k - 1]
    chosen = positive[:q][values >= cut]  # ascending items: the stable sort below keeps ties in item order
    top = chosen[np.argsort(-total[chosen], kind="mergesort")][:k]
    strongest = np.empty(top.size, np.int64)
    for t in range(top.size):
        best = 0
        best_value = rows[0, top[t]] * weights[0]
        for i in range(1, anchors.size):
            value = rows[i, top[t]] * weights[i]
            if value > best_value:
                best, best_value = i, value
        strongest[t] = best
    return top, total[top], strongest


@_compiled
def merge_hits(
    items: NDArray[np.int64],
    scores: NDArray[np.float32],
    anchors: NDArray[np.int64],
    source: NDArray[np.int8],
    rank: NDArray[np.int32],
    n_sources: int,
    no_rank: np.int32,
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int32], NDArray[np.int8], NDArray[np.int64]]:
    """The union of the sources' hits (concatenated, each source's in its own rank order, sources in their fixed
    order, then any hits of no source with ``source`` −1): sorted unique items, per source the score and rank (0 /
    ``no_rank`` where it did not find the item), the best source (lowest rank, ties to the earlier source) and the
    anchor of the best-ranked anchored hit (ties to the earlier source; −1 when none)."""
    order = np.argsort(items, kind="mergesort")
    n = items.size
    inverse = np.empty(n, np.int64)
    uniques = np.empty(n, np.int64)
    u = -1
    for s in range(n):
        i = order[s]
        if u < 0 or items[i] != uniques[u]:
            u += 1
            uniques[u] = items[i]
        inverse[i] = u
    u += 1
    unique = uniques[:u]
    source_score = np.zeros((u, n_sources), np.float32)
    source_rank = np.full((u, n_sources), no_rank, np.int32)
    anchor = np.full(u, -1, np.int64)
    anchor_rank = np.full(u, 2**62, np.int64)
    for i in range(n):
        row = inverse[i]
        if source[i] < 0:  # a candidate no source found (a pinned item): a row of its own, nothing to fill
            continue
        source_score[row, source[i]] = scores[i]
        source_rank[row, source[i]] = rank[i]
        if anchors[i] >= 0 and rank[i] < anchor_rank[row]:
            anchor_rank[row] = rank[i]
            anchor[row] = anchors[i]
    best = np.empty(u, np.int8)
    for row in range(u):
        b = 0
        for c in range(1, n_sources):
            if source_rank[row, c] < source_rank[row, b]:
                b = c
        best[row] = b
    return unique, source_score, source_rank, best, anchor


@_compiled
def greedy_fill(
    n_pick: int,
    taken: NDArray[np.bool_],
    cat_code: NDArray[np.intp],
    brand_code: NDArray[np.intp],
    branded: NDArray[np.bool_],
    cat_counts: NDArray[np.int64],
    brand_counts: NDArray[np.int64],
    cat_cap: int,
    brand_cap: int,
) -> tuple[NDArray[np.int64], int, int]:
    """The re-ranker's greedy diversity fill (``ranking.rerank._fill``): ``n_pick`` times the first untaken
    survivor (survivors in score order) whose category and brand are under their caps; when none is, the caps are
    raised just enough (brand first, then category, as ``_Caps.relax``). ``taken`` and the counts are updated in
    place; returns (the picks in list order, the category cap, the brand cap)."""
    n = taken.size
    picked = np.empty(n_pick, np.int64)
    for slot in range(n_pick):
        j = -1
        for attempt in range(2):
            for i in range(n):
                if (
                    not taken[i]
                    and cat_counts[cat_code[i]] < cat_cap
                    and (not branded[i] or brand_counts[brand_code[i]] < brand_cap)
                ):
                    j = i
                    break
            if j >= 0 or attempt == 1:
                break
            # Nothing fits: raise the brand cap if no remaining survivor's brand fits, then the category cap.
            any_brand_ok = False
            lowest_brand = np.int64(2**62)
            for i in range(n):
                if not taken[i]:
                    if not branded[i] or brand_counts[brand_code[i]] < brand_cap:
                        any_brand_ok = True
                    lowest_brand = min(lowest_brand, brand_counts[brand_code[i]])
            if not any_brand_ok:
                if lowest_brand == 2**62:
                    break  # nothing left at all
                brand_cap = int(lowest_brand) + 1
            lowest_cat = np.int64(2**62)
            for i in range(n):
                if not taken[i] and (not branded[i] or brand_counts[brand_code[i]] < brand_cap):
                    lowest_cat = min(lowest_cat, cat_counts[cat_code[i]])
            if lowest_cat < 2**62:
                cat_cap = max(cat_cap, int(lowest_cat) + 1)
        if j < 0:
            return picked[:slot], cat_cap, brand_cap
        taken[j] = True
        cat_counts[cat_code[j]] += 1
        if branded[j]:
            brand_counts[brand_code[j]] += 1
        picked[slot] = j
    return picked, cat_cap, brand_cap


def warm() -> None:
    """Compile (or load from the disk cache) both kernels for the types serving passes, before the first request."""
    anchors = np.array([0], np.int64)
    weights = np.ones(1, np.float32)
    # A version's tables are memory-mapped read-only (ranking.artifacts), and numba types a read-only array apart
    # from a writable one: both, or each web process's first request paid the load (found by a py-spy profile).
    for idx_type in (np.int32, np.int64):
        for writeable in (True, False):
            table = np.array([[1, -1]], idx_type)
            scores = np.ones((1, 2), np.float32)
            table.flags.writeable = scores.flags.writeable = writeable
            neighbour_sums(anchors, weights, table, scores, np.zeros(2, np.bool_), 1)
            neighbour_sums(anchors, weights, table, scores, np.empty(0, np.bool_), 1)
    dense_top(np.ones(2, np.float32), np.ones((1, 2), np.float32), weights, anchors, 1)
    codes = np.zeros(2, np.intp)
    greedy_fill(1, np.zeros(2, np.bool_), codes, codes, np.ones(2, np.bool_), np.zeros(1, np.int64),
                np.zeros(1, np.int64), 1, 1)  # fmt: skip
    one = np.zeros(1, np.int64)
    merge_hits(one, np.zeros(1, np.float32), one, np.zeros(1, np.int8), np.zeros(1, np.int32), 8, np.int32(10_000))
