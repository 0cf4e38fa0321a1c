"""Tests for ranking.metrics: hand-computed values, edge cases and a per-user reference cross-check."""

# Plain asserts are how pytest tests check; pyproject ignores S101 too, this keeps bare --select runs clean.
# ruff: noqa: S101

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranking import metrics
from ranking.metrics import (
    catalog_coverage,
    evaluate_lists,
    hit_matrix,
    hit_rate_at_k,
    map_at_k,
    map_at_k_per_user,
    max_category_share_per_user,
    mean_max_category_share,
    ndcg_at_k,
    ndcg_at_k_per_user,
    novelty,
    novelty_per_user,
    precision_at_k,
    precision_at_k_per_user,
    recall_at_k,
    recall_at_k_per_user,
)


def _reference(rec_row: list[int], rel: set[int], k: int) -> dict[str, float]:
    """Textbook per-user definitions, written for clarity rather than speed."""
    seen: set[int] = set()
    hits = []
    for item in rec_row[:k]:
        hits.append(item >= 0 and item in rel and item not in seen)
        seen.add(item)
    hits += [False] * (k - len(hits))
    n_hits = sum(hits)
    dcg = sum(1.0 / math.log2(i + 2) for i, hit in enumerate(hits) if hit)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
    ap_sum, running = 0.0, 0
    for i, hit in enumerate(hits):
        if hit:
            running += 1
            ap_sum += running / (i + 1)
    return {
        "precision": n_hits / k,
        "recall": n_hits / len(rel),
        "ndcg": dcg / idcg,
        "map": ap_sum / min(len(rel), k),
        "hit_rate": float(n_hits > 0),
    }


def test_hand_computed_example() -> None:
    rec = np.array([[1, 2, 3]])
    rel = [np.array([1, 3])]
    # hits = [1, 0, 1]; P@3 = 2/3; R@3 = 2/|{1,3}| = 1.
    assert precision_at_k(rec, rel, 3) == pytest.approx(2 / 3)
    assert recall_at_k(rec, rel, 3) == pytest.approx(1.0)
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (2 ideal hits) = 1 + 1/log2(3) = 1.63093;
    # nDCG = 1.5 / 1.63093 = 0.919721.
    assert ndcg_at_k(rec, rel, 3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(rec, rel, 3) == pytest.approx(0.9197207891)
    # AP@3 = (P@1 + P@3) / min(2, 3) = (1/1 + 2/3) / 2 = 0.8333.
    assert map_at_k(rec, rel, 3) == pytest.approx(5 / 6)
    assert hit_rate_at_k(rec, rel, 3) == 1.0


def test_hit_matrix_marks_relevant_positions() -> None:
    rec = np.array([[1, 2, 3], [4, 5, -1]])
    rel = [np.array([3, 1]), np.array([9])]
    np.testing.assert_array_equal(hit_matrix(rec, rel, 3), [[True, False, True], [False, False, False]])


def test_padding_counts_as_miss_but_not_in_ideal() -> None:
    rec = np.array([[5, -1, -1]])
    rel = [np.array([5])]
    # One hit out of k=3 slots: P = 1/3; R = 1/1; DCG = IDCG = 1 -> nDCG = 1; AP = (1/1) / min(1, 3) = 1.
    assert precision_at_k(rec, rel, 3) == pytest.approx(1 / 3)
    assert recall_at_k(rec, rel, 3) == pytest.approx(1.0)
    assert ndcg_at_k(rec, rel, 3) == pytest.approx(1.0)
    assert map_at_k(rec, rel, 3) == pytest.approx(1.0)


def test_k_larger_than_list_is_padded() -> None:
    rec = np.array([[1, 2]])
    rel = [np.array([1, 2, 3, 4, 5, 6])]
    # k = 5 with a 2-item list: P = 2/5; R = 2/6.
    assert precision_at_k(rec, rel, 5) == pytest.approx(0.4)
    assert recall_at_k(rec, rel, 5) == pytest.approx(1 / 3)
    # DCG = 1 + 1/log2(3) = 1.63093; IDCG = sum_{i<5} 1/log2(i+2) = 1 + .63093 + .5 + .43068 + .38685
    # = 2.94846; nDCG = 0.55314.
    assert ndcg_at_k(rec, rel, 5) == pytest.approx(0.553146, abs=1e-6)
    # AP = (1/1 + 2/2) / min(6, 5) = 0.4.
    assert map_at_k(rec, rel, 5) == pytest.approx(0.4)


def test_k_smaller_than_list_truncates() -> None:
    rec = np.array([[7, 1, 2]])
    rel = [np.array([1, 2])]
    # Only item 7 is within k = 1: no hit anywhere.
    assert precision_at_k(rec, rel, 1) == 0.0
    assert hit_rate_at_k(rec, rel, 1) == 0.0
    # At k = 2: hits [0, 1]; AP = (1/2) / min(2, 2) = 0.25.
    assert map_at_k(rec, rel, 2) == pytest.approx(0.25)


def test_duplicates_in_a_list_count_once() -> None:
    rec = np.array([[1, 1, 1]])
    rel = [np.array([1, 2, 2])]
    # |rel| = 2 distinct items; the repeated 1 is one hit: P = 1/3, R = 1/2.
    assert precision_at_k(rec, rel, 3) == pytest.approx(1 / 3)
    assert recall_at_k(rec, rel, 3) == pytest.approx(0.5)


def test_users_without_relevant_items_are_skipped() -> None:
    rec = np.array([[1, 2], [3, 4]])
    rel = [np.array([], dtype=np.int64), np.array([4])]
    per_user = precision_at_k_per_user(rec, rel, 2)
    assert math.isnan(per_user[0])
    assert per_user[1] == pytest.approx(0.5)
    # The mean is over the one defined user only.
    assert precision_at_k(rec, rel, 2) == pytest.approx(0.5)
    assert math.isnan(recall_at_k_per_user(rec, rel, 2)[0])
    assert math.isnan(ndcg_at_k_per_user(rec, rel, 2)[0])
    assert math.isnan(map_at_k_per_user(rec, rel, 2)[0])


def test_no_relevant_items_at_all_gives_zero_not_nan() -> None:
    rec = np.array([[1, 2]])
    rel: list[np.ndarray] = [np.array([], dtype=np.int64)]
    for fn in (precision_at_k, recall_at_k, ndcg_at_k, map_at_k, hit_rate_at_k):
        assert fn(rec, rel, 2) == 0.0


def test_negative_relevant_values_are_ignored() -> None:
    rec = np.array([[-1, 3]])
    rel = [np.array([-1, 3])]
    # -1 is padding on both sides, so |rel| = 1 and the single hit is at rank 2.
    assert recall_at_k(rec, rel, 2) == pytest.approx(1.0)
    assert ndcg_at_k(rec, rel, 2) == pytest.approx(1 / math.log2(3))


def test_empty_user_set() -> None:
    rec = np.zeros((0, 5), dtype=np.int64)
    assert precision_at_k(rec, [], 5) == 0.0
    assert hit_matrix(rec, [], 5).shape == (0, 5)


@pytest.mark.parametrize(
    ("recommended", "relevant", "k", "message"),
    [
        (np.array([1, 2]), [np.array([1])], 2, "2-D"),
        (np.array([[1, 2]]), [np.array([1])], 0, "k must be"),
        (np.array([[1, 2]]), [np.array([1]), np.array([2])], 2, "relevant has 2 users"),
        (np.array([[1.0, 2.0]]), [np.array([1])], 2, "integer"),
    ],
)
def test_invalid_input(recommended: np.ndarray, relevant: list[np.ndarray], k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        precision_at_k(recommended, relevant, k)


def test_matches_reference_on_random_data() -> None:
    rng = np.random.default_rng(20240611)
    n_users, n_items, k = 300, 40, 10
    rec = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    # Some short lists, to exercise padding.
    rec[rng.random(rec.shape) < 0.1] = -1
    relevant = [rng.choice(n_items, size=rng.integers(1, 15), replace=False) for _ in range(n_users)]
    expected = [_reference(rec[u].tolist(), set(relevant[u].tolist()), k) for u in range(n_users)]
    for name, fn in (
        ("precision", precision_at_k_per_user),
        ("recall", recall_at_k_per_user),
        ("ndcg", ndcg_at_k_per_user),
        ("map", map_at_k_per_user),
        ("hit_rate", metrics.hit_rate_at_k_per_user),
    ):
        np.testing.assert_allclose(fn(rec, relevant, k), [e[name] for e in expected], err_msg=name)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.integers(-1, 12), min_size=0, max_size=8),
            st.sets(st.integers(0, 12), min_size=1, max_size=10),
        ),
        min_size=1,
        max_size=6,
    ),
    k=st.integers(1, 10),
)
def test_property_matches_reference(rows: list[tuple[list[int], set[int]]], k: int) -> None:
    width = max(len(r) for r, _ in rows)
    rec = np.full((len(rows), width), -1, dtype=np.int64)
    for u, (row, _) in enumerate(rows):
        rec[u, : len(row)] = row
    relevant = [np.array(sorted(rel), dtype=np.int64) for _, rel in rows]
    expected = [_reference(rec[u].tolist(), rel, k) for u, (_, rel) in enumerate(rows)]
    for name, fn in (
        ("precision", precision_at_k_per_user),
        ("recall", recall_at_k_per_user),
        ("ndcg", ndcg_at_k_per_user),
        ("map", map_at_k_per_user),
    ):
        got = fn(rec, relevant, k)
        np.testing.assert_allclose(got, [e[name] for e in expected], err_msg=name)
        assert ((got >= 0) & (got <= 1 + 1e-12)).all()


def test_catalog_coverage() -> None:
    rec = np.array([[0, 1, -1], [1, 2, -1]])
    # Distinct items {0, 1, 2} out of 10.
    assert catalog_coverage(rec, 10) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="outside the catalog"):
        catalog_coverage(rec, 2)


def test_max_category_share() -> None:
    item_category = np.array([0, 0, 1, 2, 0])
    rec = np.array(
        [
            [0, 1, 2, 3],  # categories 0, 0, 1, 2 -> 2/4 = 0.5
            [0, 1, 4, -1],  # categories 0, 0, 0 -> 3/3 = 1.0
            [2, 3, -1, -1],  # categories 1, 2 -> 1/2 = 0.5
            [-1, -1, -1, -1],  # empty list -> undefined
        ]
    )
    per_user = max_category_share_per_user(rec, item_category)
    np.testing.assert_allclose(per_user[:3], [0.5, 1.0, 0.5])
    assert math.isnan(per_user[3])
    # Mean over the three non-empty lists: (0.5 + 1 + 0.5) / 3.
    assert mean_max_category_share(rec, item_category) == pytest.approx(2 / 3)


def test_max_category_share_matches_counting() -> None:
    rng = np.random.default_rng(7)
    item_category = rng.integers(0, 5, 50)
    rec = rng.integers(-1, 50, (200, 12))
    got = max_category_share_per_user(rec, item_category)
    for u in range(rec.shape[0]):
        cats = item_category[rec[u][rec[u] >= 0]]
        expected = np.bincount(cats).max() / cats.size if cats.size else np.nan
        np.testing.assert_allclose(got[u], expected)


def test_novelty() -> None:
    popularity = np.array([50, 25, 0])
    rec = np.array([[0, 1], [2, -1], [-1, -1]])
    # Item 0: -log2(50/100) = 1; item 1: -log2(25/100) = 2; item 2 has pop 0, clipped to 1:
    # -log2(1/100) = 6.643856. Lists: (1 + 2) / 2 = 1.5 and 6.643856; the empty list is skipped.
    per_user = novelty_per_user(rec, popularity, 100)
    np.testing.assert_allclose(per_user[:2], [1.5, math.log2(100)])
    assert math.isnan(per_user[2])
    assert novelty(rec, popularity, 100) == pytest.approx((1.5 + math.log2(100)) / 2)


def test_evaluate_lists_keys_and_consistency() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items, k = 50, 30, 5
    rec = np.stack([rng.permutation(n_items)[:8] for _ in range(n_users)])
    relevant = [rng.choice(n_items, size=3, replace=False) for _ in range(n_users)]
    category = rng.integers(0, 4, n_items)
    popularity = rng.integers(0, 200, n_items)
    result = evaluate_lists(rec, relevant, k, n_items, category, popularity, 200)
    assert list(result) == [
        "precision@5",
        "recall@5",
        "ndcg@5",
        "map@5",
        "hit_rate@5",
        "coverage@5",
        "max_category_share",
        "novelty",
    ]
    assert result["precision@5"] == pytest.approx(precision_at_k(rec, relevant, k))
    assert result["recall@5"] == pytest.approx(recall_at_k(rec, relevant, k))
    assert result["ndcg@5"] == pytest.approx(ndcg_at_k(rec, relevant, k))
    assert result["map@5"] == pytest.approx(map_at_k(rec, relevant, k))
    assert result["hit_rate@5"] == pytest.approx(hit_rate_at_k(rec, relevant, k))
    # Coverage, diversity and novelty only look at the first k columns.
    assert result["coverage@5"] == pytest.approx(catalog_coverage(rec[:, :k], n_items))
    assert result["max_category_share"] == pytest.approx(mean_max_category_share(rec[:, :k], category))
    assert result["novelty"] == pytest.approx(novelty(rec[:, :k], popularity, 200))
    assert all(isinstance(v, float) for v in result.values())
