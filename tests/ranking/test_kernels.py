"""The compiled retrieval loops (ranking.kernels) give exactly what the numpy versions they replaced gave: same
items, same float32 sums, same anchors, same merged matrices, on random tables full of ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from ranking import kernels
from ranking.rerank import RerankConfig, _Caps, _fill
from ranking.retrieval import NO_RANK, SOURCES, SourceHits, dense_neighbours, merge, neighbours


def _neighbours_numpy(
    anchors: NDArray[np.int64],
    anchor_weight: NDArray[np.floating],
    neighbour_idx: NDArray[np.integer],
    neighbour_score: NDArray[np.floating],
    k: int,
    exclude: NDArray[np.bool_] | None = None,
) -> SourceHits:
    """ranking.retrieval.neighbours as it was in numpy (one sort of (item, position) keys), the reference."""
    width = neighbour_idx.shape[1]
    n = anchors.size * width
    shift = n.bit_length()
    contrib = (neighbour_score[anchors].astype(np.float32) * anchor_weight.astype(np.float32)[:, None]).ravel()
    keys = (neighbour_idx[anchors].ravel().astype(np.int64) << shift) | np.arange(n)
    keys.sort()
    keys = keys[np.searchsorted(keys, 0) :]
    if keys.size == 0:
        return SourceHits.empty()
    position = keys & ((1 << shift) - 1)
    items = keys >> shift
    contrib = contrib[position]
    starts = np.flatnonzero(np.concatenate(([True], items[1:] != items[:-1])))
    total = np.add.reduceat(contrib.astype(np.float64), starts).astype(np.float32)
    unique = items[starts]
    keep = np.ones(unique.size, bool)
    at = np.minimum(np.searchsorted(unique, anchors), unique.size - 1)
    keep[at[unique[at] == anchors]] = False
    if exclude is not None:
        keep &= ~exclude[unique]
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        return SourceHits.empty()
    k = min(k, kept.size)
    values = total[kept]
    cut = -np.partition(-values, k - 1)[k - 1]
    above, level = kept[values > cut], kept[values == cut]
    chosen = np.concatenate((above, level[: k - above.size]))
    top = chosen[np.argsort(-total[chosen], kind="stable")]
    sizes = np.diff(np.append(starts, items.size))[top]
    span = np.arange(int(sizes.max()))
    slots = starts[top][:, None] + span
    strength = np.where(span < sizes[:, None], contrib[np.minimum(slots, items.size - 1)], -np.inf)
    strongest = slots[np.arange(top.size), np.argmax(strength, axis=1)]
    return SourceHits(unique[top], total[top], anchors[position[strongest] // width])


def _dense_numpy(
    anchors: NDArray[np.int64], anchor_weight: NDArray[np.floating], matrix: NDArray[np.floating], k: int
) -> SourceHits:
    """ranking.retrieval.dense_neighbours as it was in numpy, the reference (exact ties at the k-th score aside:
    argpartition kept an arbitrary one, the kernel the smaller item)."""
    rows = np.asarray(matrix[anchors], np.float32)
    total = np.asarray(anchor_weight, np.float32) @ rows
    total[anchors] = -np.inf
    positive = np.flatnonzero(total > 0)
    if positive.size == 0:
        return SourceHits.empty()
    k = min(k, positive.size)
    values = total[positive]
    top = positive[np.argpartition(-values, k - 1)[:k]] if k < positive.size else positive
    top = top[np.lexsort((top, -total[top]))]
    strongest = np.argmax(rows[:, top] * np.asarray(anchor_weight, np.float32)[:, None], axis=0)
    return SourceHits(top.astype(np.int64), total[top], anchors[strongest].astype(np.int64))


def _merge_numpy(hits: dict[str, SourceHits]) -> tuple[NDArray[np.generic], ...]:
    """ranking.retrieval.merge as it was in numpy, the reference."""
    names = [name for name in SOURCES if name in hits and len(hits[name])]
    items = np.concatenate([hits[n].item_idx for n in names])
    scores = np.concatenate([hits[n].score for n in names]).astype(np.float32)
    anchors = np.concatenate([hits[n].anchor for n in names])
    source = np.concatenate([np.full(len(hits[n]), SOURCES.index(n), np.int8) for n in names])
    rank = np.concatenate([np.arange(len(hits[n]), dtype=np.int32) for n in names])
    unique, inverse = np.unique(items, return_inverse=True)
    source_score = np.zeros((unique.size, len(SOURCES)), np.float32)
    source_rank = np.full((unique.size, len(SOURCES)), NO_RANK, np.int32)
    source_score[inverse, source] = scores
    source_rank[inverse, source] = rank
    best = np.argmin(source_rank, axis=1).astype(np.int8)
    anchor = np.full(unique.size, -1, np.int64)
    anchored = np.flatnonzero(anchors >= 0)
    if anchored.size:
        order = anchored[np.lexsort((rank[anchored], inverse[anchored]))]
        first = np.ones(order.size, bool)
        first[1:] = inverse[order][1:] != inverse[order][:-1]
        anchor[inverse[order][first]] = anchors[order][first]
    return unique, source_score, source_rank, best, anchor


@settings(max_examples=400, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_items=st.integers(2, 400),
    width=st.integers(1, 40),
    n_anchors=st.integers(1, 60),
    k=st.integers(1, 120),
    floor=st.sampled_from([0.0, 0.3, 1.0]),
    with_exclude=st.booleans(),
    table_type=st.sampled_from([np.int32, np.int64]),
)
def test_the_compiled_aggregation_is_the_numpy_one_bit_for_bit(
    seed: int, n_items: int, width: int, n_anchors: int, k: int, floor: float, with_exclude: bool, table_type: type
) -> None:
    rng = np.random.default_rng(seed)
    width = min(width, n_items)
    idx = np.stack([rng.permutation(n_items)[:width] for _ in range(n_items)]).astype(table_type)
    idx[rng.random(idx.shape) < 0.15] = -1
    # Coarse scores make many exact ties in the sums and in the strongest contribution.
    score = rng.choice(np.array([1.0, 0.5, 0.25, 0.125, 0.3], np.float32), size=idx.shape)
    anchors = rng.choice(n_items, size=min(n_anchors, n_items), replace=False).astype(np.int64)
    weights = (floor + (1 - floor) * 0.85 ** np.arange(anchors.size)).astype(np.float32)
    exclude = rng.random(n_items) < 0.2 if with_exclude else None

    got = neighbours(anchors, weights, idx, score, k, exclude)
    want = _neighbours_numpy(anchors, weights, idx, score, k, exclude)

    np.testing.assert_array_equal(got.item_idx, want.item_idx)
    np.testing.assert_array_equal(got.score, want.score)
    np.testing.assert_array_equal(got.anchor, want.anchor)
    assert got.item_idx.dtype == np.int64
    assert got.score.dtype == np.float32
    assert got.anchor.dtype == np.int64


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_items=st.integers(2, 300),
    width=st.integers(1, 30),
    n_anchors=st.integers(1, 40),
    with_exclude=st.booleans(),
)
def test_the_sums_by_item_and_the_hashed_sums_are_the_same_bit_for_bit(
    seed: int, n_items: int, width: int, n_anchors: int, with_exclude: bool
) -> None:
    """``neighbour_sums`` keeps its sums in arrays indexed by item on a small catalog and in a hash on a large one:
    the two give the same items in the same order, the same sums and the same strongest anchors."""
    rng = np.random.default_rng(seed)
    width = min(width, n_items)
    idx = np.stack([rng.permutation(n_items)[:width] for _ in range(n_items)]).astype(np.int32)
    idx[rng.random(idx.shape) < 0.15] = -1
    score = rng.choice(np.array([1.0, 0.5, 0.25, 0.125, 0.3], np.float32), size=idx.shape)
    # With repeats: an anchor listed twice (a history item whose events were merged from two owners).
    anchors = rng.choice(n_items, size=n_anchors, replace=True).astype(np.int64)
    weights = (0.85 ** np.arange(anchors.size)).astype(np.float32)
    exclude = rng.random(n_items) < 0.2 if with_exclude else np.empty(0, np.bool_)
    size = 16
    while size < 2 * anchors.size * width:
        size <<= 1

    by_item = kernels._aggregate(anchors, weights, idx, score, exclude, n_items, True)
    hashed = kernels._aggregate(anchors, weights, idx, score, exclude, size, False)

    assert by_item[3] == hashed[3]
    q = by_item[3]
    for got, want in zip(by_item[:3], hashed[:3], strict=True):
        np.testing.assert_array_equal(got[:q], want[:q])


def test_what_numpy_would_refuse_is_refused_before_the_compiled_loop() -> None:
    idx = np.array([[1, 2], [0, 2], [0, 1]], np.int32)
    score = np.ones((3, 2), np.float32)
    with pytest.raises(IndexError):
        neighbours(np.array([3]), np.ones(1), idx, score, 5)
    with pytest.raises(IndexError):
        neighbours(np.array([-1]), np.ones(1), idx, score, 5)
    with pytest.raises(IndexError):
        neighbours(np.array([0]), np.ones(1), idx, score, 5, np.zeros(2, bool))
    with pytest.raises(IndexError):
        dense_neighbours(np.array([3]), np.ones(1), np.ones((3, 3), np.float32), 5)


def test_an_anchor_listed_twice_or_every_neighbour_excluded_leaves_nothing_behind() -> None:
    idx = np.array([[1, 2], [0, 2], [0, 1]], np.int32)
    score = np.ones((3, 2), np.float32)
    assert neighbours(np.array([0, 0, 1]), np.ones(3), idx, score, 5).item_idx.tolist() == [2]
    assert len(neighbours(np.array([0]), np.ones(1), idx, score, 5, np.array([False, True, True]))) == 0
    assert len(neighbours(np.array([0]), np.ones(1), np.full((3, 2), -1, np.int32), score, 5)) == 0


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_items=st.integers(1, 60), n_sources=st.integers(1, len(SOURCES)))
def test_the_compiled_merge_is_the_numpy_one(seed: int, n_items: int, n_sources: int) -> None:
    rng = np.random.default_rng(seed)
    hits = {}
    for name in rng.choice(np.array(SOURCES), size=n_sources, replace=False).tolist():
        size = int(rng.integers(0, n_items + 1))
        items = rng.choice(n_items, size=size, replace=False).astype(np.int64)
        anchors = np.where(rng.random(size) < 0.5, rng.integers(0, 5, size), -1).astype(np.int64)
        hits[name] = SourceHits(items, rng.random(size).astype(np.float32), anchors)
    if not any(len(h) for h in hits.values()):
        assert merge(hits).item_idx.size == 0
        return

    got = merge(hits)
    unique, source_score, source_rank, best, anchor = _merge_numpy(hits)

    np.testing.assert_array_equal(got.item_idx, unique)
    np.testing.assert_array_equal(got.source_score, source_score)
    np.testing.assert_array_equal(got.source_rank, source_rank)
    np.testing.assert_array_equal(got.best_source, best)
    np.testing.assert_array_equal(got.anchor, anchor)
    assert got.source_rank.dtype == np.int32
    assert got.best_source.dtype == np.int8


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_items=st.integers(2, 300),
    n_anchors=st.integers(1, 40),
    k=st.integers(1, 150),
    floor=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_the_compiled_dense_top_is_the_numpy_one(seed: int, n_items: int, n_anchors: int, k: int, floor: float) -> None:
    rng = np.random.default_rng(seed)
    # An EASE-like matrix: mostly small weights of both signs, a zero diagonal.
    matrix = rng.normal(0.0, 0.1, (n_items, n_items)).astype(np.float32)
    np.fill_diagonal(matrix, 0.0)
    anchors = rng.choice(n_items, size=min(n_anchors, n_items), replace=False).astype(np.int64)
    weights = (floor + (1 - floor) * 0.85 ** np.arange(anchors.size)).astype(np.float32)

    got = dense_neighbours(anchors, weights, matrix, k)
    want = _dense_numpy(anchors, weights, matrix, k)

    np.testing.assert_array_equal(got.item_idx, want.item_idx)
    np.testing.assert_array_equal(got.score, want.score)
    np.testing.assert_array_equal(got.anchor, want.anchor)


def test_without_a_place_for_numbas_cache_the_loops_are_compiled_all_the_same(caplog: pytest.LogCaptureFixture) -> None:
    """numba refuses ``cache=True`` when no cache location is writable (a read-only install): the kernels then
    compile in the process. A function with no source file has no cache location either, like that install."""
    namespace: dict[str, object] = {}
    exec(compile("def plus_one(x):\n    return x + 1\n", "<no file>", "exec"), namespace)  # noqa: S102
    with caplog.at_level("WARNING", logger="ranking.kernels"):
        plus_one = kernels._compiled(namespace["plus_one"])
    assert [r.message for r in caplog.records] == ["numba_cache_unavailable"]
    assert plus_one(41) == 42


def _greedy_fill_python(n_pick: int, taken: NDArray[np.bool_], caps: _Caps) -> list[int]:
    """ranking.rerank._fill's greedy path as it was in numpy (the caps' own methods), the reference."""
    picked = []
    eligible = ~taken & caps.fits()
    for _ in range(n_pick):
        if not eligible.any():
            caps.relax(~taken)
            eligible = ~taken & caps.fits()
        j = int(np.argmax(eligible))
        taken[j] = True
        eligible[j] = False
        caps.add(j)
        if caps.at_cap(j):
            eligible &= caps.fits()
        picked.append(j)
    return picked


@settings(max_examples=400, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 80),
    n_categories=st.integers(1, 6),
    n_brands=st.integers(0, 5),
    cat_cap=st.integers(1, 5),
    brand_cap=st.integers(1, 5),
    pinned=st.integers(0, 4),
)
def test_the_compiled_greedy_fill_is_the_numpy_one(
    seed: int, n: int, n_categories: int, n_brands: int, cat_cap: int, brand_cap: int, pinned: int
) -> None:
    rng = np.random.default_rng(seed)
    category = rng.integers(0, n_categories, n) * 7  # sparse codes, as catalog primary keys are
    brand = np.where(rng.random(n) < 0.3, -1, rng.integers(0, max(n_brands, 1), n)) if n_brands else np.full(n, -1)
    taken = np.zeros(n, bool)
    taken[rng.choice(n, size=min(pinned, n), replace=False)] = True  # pinned slots, counted before the fill
    n_pick = int(rng.integers(0, (~taken).sum() + 1))
    python_caps = _Caps(category, brand, cat_cap, brand_cap)
    python_caps.add_many(np.flatnonzero(taken))
    kernel_caps = _Caps(category, brand, cat_cap, brand_cap)
    kernel_caps.add_many(np.flatnonzero(taken))
    python_taken, kernel_taken = taken.copy(), taken.copy()

    want = _greedy_fill_python(n_pick, python_taken, python_caps)
    got = _fill(n_pick, kernel_taken, np.zeros(n), kernel_caps, RerankConfig(count=n_pick, diversity="greedy"))

    assert got == want
    np.testing.assert_array_equal(kernel_taken, python_taken)
    np.testing.assert_array_equal(kernel_caps.cat_counts, python_caps.cat_counts)
    np.testing.assert_array_equal(kernel_caps.brand_counts, python_caps.brand_counts)
    assert (kernel_caps.cat_cap, kernel_caps.brand_cap) == (python_caps.cat_cap, python_caps.brand_cap)


@pytest.mark.parametrize("idx_type", [np.int32, np.int64])
def test_warm_compiles_the_types_a_loaded_version_passes(tmp_path: Path, idx_type: type[np.integer]) -> None:
    """A version's neighbour tables are read-only memory maps (ranking.artifacts), which numba types apart from
    writable arrays: after ``warm()``, serving them compiles (or loads) nothing more, so no request pays for it."""
    kernels.warm()
    directory = tmp_path
    np.save(directory / "idx.npy", np.array([[1, 2], [0, -1], [0, 1]], idx_type))
    np.save(directory / "score.npy", np.array([[0.5, 0.25], [1.0, 0.0], [0.3, 0.2]], np.float32))
    table = np.asarray(np.load(directory / "idx.npy", mmap_mode="r"))
    scores = np.asarray(np.load(directory / "score.npy", mmap_mode="r"))
    assert not table.flags.writeable
    before = list(kernels.neighbour_sums.signatures)
    anchors = np.array([0, 2], np.int64)
    weights = np.array([1.0, 0.5])
    neighbours(anchors, weights, table, scores, 5)
    neighbours(anchors, weights, table, scores, 5, exclude=np.zeros(3, np.bool_))
    assert list(kernels.neighbour_sums.signatures) == before
