"""Retrieval sources and the merge, on hand-made arrays."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ranking.pipeline.state import anchor_weights
from ranking.retrieval import NO_RANK, SOURCE_INDEX, SourceHits, dense_neighbours, merge, neighbours, top_k


def test_top_k_orders_and_excludes() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    exclude = np.array([False, True, False, False, False])
    hits = top_k(scores, 3, exclude)
    assert hits.item_idx.tolist() == [3, 2, 4]
    assert np.allclose(hits.score, [0.7, 0.5, 0.3])
    assert hits.anchor.tolist() == [-1, -1, -1]
    assert top_k(scores, 10, np.ones(5, bool)).item_idx.size == 0


def test_neighbours_sum_over_anchors_and_name_the_strongest() -> None:
    # Item 0's neighbours: 2 (0.9), 3 (0.2); item 1's neighbours: 3 (0.5), 4 (0.4), 0 (0.3).
    neighbour_idx = np.array([[2, 3, -1], [3, 4, 0], [0, -1, -1], [1, -1, -1], [1, -1, -1]])
    neighbour_score = np.array([[0.9, 0.2, 0], [0.5, 0.4, 0.3], [0.9, 0, 0], [0.5, 0, 0], [0.4, 0, 0]])
    hits = neighbours(np.array([0, 1]), np.array([1.0, 1.0]), neighbour_idx, neighbour_score, k=10)
    got = dict(zip(hits.item_idx.tolist(), hits.score.tolist(), strict=True))
    # 3 is near both anchors (0.2 + 0.5); anchors themselves (0) are never returned.
    assert set(got) == {2, 3, 4}
    assert np.isclose(got[3], 0.7)
    assert hits.item_idx.tolist() == [2, 3, 4]
    anchors = dict(zip(hits.item_idx.tolist(), hits.anchor.tolist(), strict=True))
    assert anchors == {2: 0, 3: 1, 4: 1}


def test_neighbours_weights_and_exclusion() -> None:
    neighbour_idx = np.array([[2, 3], [3, 2], [0, 1], [0, 1]])
    neighbour_score = np.array([[0.9, 0.1], [0.9, 0.1], [1.0, 1.0], [1.0, 1.0]])
    exclude = np.array([False, False, True, False])
    hits = neighbours(np.array([0, 1]), np.array([1.0, 0.1]), neighbour_idx, neighbour_score, 5, exclude)
    assert hits.item_idx.tolist() == [3]
    assert np.isclose(hits.score[0], 0.1 * 1.0 + 0.9 * 0.1)


def test_merge_keeps_every_source_and_picks_the_best() -> None:
    ann = SourceHits(np.array([5, 7]), np.array([0.9, 0.8], np.float32), np.array([-1, -1]))
    knn = SourceHits(np.array([7, 9]), np.array([2.0, 1.0], np.float32), np.array([1, 2]))
    popular = SourceHits(np.array([9, 5, 11]), np.array([100, 90, 80], np.float32), np.full(3, -1))
    merged = merge({"ann": ann, "item_knn": knn, "popular": popular})
    assert merged.item_idx.tolist() == [5, 7, 9, 11]
    ranks = merged.source_rank
    assert ranks[1, SOURCE_INDEX["ann"]] == 1
    assert ranks[1, SOURCE_INDEX["item_knn"]] == 0
    assert ranks[3, SOURCE_INDEX["ann"]] == NO_RANK
    # Item 7 was ranked first by item-kNN (rank 0 < ANN's 1): its anchor is item 1.
    assert merged.best_source[1] == SOURCE_INDEX["item_knn"]
    assert merged.anchor.tolist() == [-1, 1, 2, -1]
    # Item 9: rank 1 in kNN and rank 0 in popular -> popular wins, but kNN's anchor (2) still explains it.
    assert merged.best_source[2] == SOURCE_INDEX["popular"]
    assert merged.anchor[2] == 2
    assert merged.per_source_counts()["popular"] == 3
    assert merge({}).item_idx.size == 0


def _neighbours_by_hand(
    anchors: np.ndarray, weights: np.ndarray, idx: np.ndarray, score: np.ndarray, k: int, exclude: np.ndarray | None
) -> list[tuple[int, float, int]]:
    """The definition, one hit at a time: (item, summed weighted similarity, strongest anchor), best first; ties
    in the sum go to the smaller item, ties in strength to the more recent anchor."""
    totals: dict[int, float] = {}
    best: dict[int, tuple[float, int]] = {}
    for a, w in zip(anchors.tolist(), weights.tolist(), strict=True):
        for item, s in zip(idx[a].tolist(), score[a].tolist(), strict=True):
            if item < 0 or item in anchors.tolist() or (exclude is not None and exclude[item]):
                continue
            c = float(np.float32(s) * np.float32(w))
            totals[item] = totals.get(item, 0.0) + c
            if item not in best or c > best[item][0]:
                best[item] = (c, a)
    ranked = sorted(totals, key=lambda item: (-np.float32(totals[item]), item))[:k]
    return [(item, float(np.float32(totals[item])), best[item][1]) for item in ranked]


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_items=st.integers(12, 80),
    width=st.integers(1, 12),
    n_anchors=st.integers(1, 10),
    k=st.integers(1, 30),
    with_exclude=st.booleans(),
)
def test_neighbours_agree_with_the_definition(
    seed: int, n_items: int, width: int, n_anchors: int, k: int, with_exclude: bool
) -> None:
    rng = np.random.default_rng(seed)
    # Top-m tables as training writes them: distinct neighbours per row, −1 padding; coarse scores make ties.
    idx = np.stack([rng.permutation(n_items)[:width] for _ in range(n_items)]).astype(np.int32)
    idx[rng.random(idx.shape) < 0.2] = -1
    score = rng.choice(np.array([1.0, 0.5, 0.25, 0.125], np.float32), size=idx.shape)
    anchors = rng.permutation(n_items)[:n_anchors].astype(np.int64)
    weights = (0.85 ** np.arange(n_anchors)).astype(np.float32)
    exclude = rng.random(n_items) < 0.2 if with_exclude else None

    hits = neighbours(anchors, weights, idx, score, k, exclude)

    expected = _neighbours_by_hand(anchors, weights, idx, score, k, exclude)
    assert hits.item_idx.tolist() == [item for item, _, _ in expected]
    np.testing.assert_allclose(hits.score, [total for _, total, _ in expected], rtol=1e-6)
    assert hits.anchor.tolist() == [anchor for _, _, anchor in expected]


def test_dense_neighbours_equal_the_tables_when_the_tables_hold_every_item() -> None:
    """EASE's full matrix (a catalog small enough to keep it) scores exactly what a neighbour table of full width
    would: the weighted sum over the anchors, the anchors left out, the strongest contributor named."""
    rng = np.random.default_rng(3)
    n = 30
    matrix = rng.uniform(0.01, 1.0, (n, n)).astype(np.float32)
    np.fill_diagonal(matrix, 0.0)
    table_idx = np.argsort(-matrix, axis=1)[:, : n - 1]
    table_score = np.take_along_axis(matrix, table_idx, axis=1)
    anchors = np.array([4, 17, 9])
    weights = anchor_weights(3, 0.5, 0.2)
    assert np.allclose(weights, [1.0, 0.6, 0.4])
    dense = dense_neighbours(anchors, weights, matrix, k=8)
    table = neighbours(anchors, weights, table_idx, table_score, k=8)
    assert dense.item_idx.tolist() == table.item_idx.tolist()
    assert np.allclose(dense.score, table.score, atol=1e-5)
    assert dense.anchor.tolist() == table.anchor.tolist()
    assert not set(dense.item_idx.tolist()) & set(anchors.tolist())
    assert dense_neighbours(np.array([], np.int64), weights[:0], matrix, k=8).item_idx.size == 0


def test_merge_keeps_hits_of_no_source_as_candidates_no_source_found() -> None:
    """Pinned items no source found join the candidates (so the re-ranker can place them) with no source's rank."""
    popular = SourceHits(np.array([3, 1]), np.array([2.0, 1.0], np.float32), np.full(2, -1))
    pinned = SourceHits(np.array([9, 1]), np.zeros(2, np.float32), np.full(2, -1))
    merged = merge({"popular": popular, "pinned": pinned})
    assert merged.item_idx.tolist() == [1, 3, 9]
    assert merged.source_rank[2].tolist() == [NO_RANK] * len(merged.source_rank[2])
    assert merged.source_rank[0, SOURCE_INDEX["popular"]] == 1
    assert merged.per_source_counts()["popular"] == 2
