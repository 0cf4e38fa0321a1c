"""Ranker features, the blended fallback score, and LambdaMART learning a planted signal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ranking.ranker import FEATURE_NAMES, FeatureContext, blend_scores, build_features, score, train_ranker
from ranking.retrieval import SourceHits, merge


def test_features_are_aligned_with_names() -> None:
    cands = merge(
        {
            "item_knn": SourceHits(np.array([2, 5]), np.array([0.9, 0.1], np.float32), np.array([0, 3])),
            "popular": SourceHits(np.array([5, 1]), np.array([9, 8], np.float32), np.array([-1, -1])),
        }
    )
    # Candidates are items 1, 2, 5 (in that order); the context gives one value per candidate.
    context = FeatureContext(
        category=np.array([0, 1, 2]),
        popularity=np.array([1.0, 2.0, 5.0]),
        trend=np.ones(3),
        age_days=np.full(3, 10.0),
        price=np.array([2.0, np.nan, 6.0]),
        als_dot=np.array([0.5, 0.0, 0.0], np.float32),
        category_affinity={1: 3.0, 2: 1.0},
        history_ids=np.array([3, 0]),
        last_category=1,
    )
    X = build_features(cands, context)
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    assert X.shape == (3, len(FEATURE_NAMES))
    assert np.isnan(X[0, col["item_knn_rank"]])
    assert X[1, col["item_knn_rank"]] == 0
    assert (X[2, col["popular_rank"]], X[2, col["n_sources"]]) == (0, 2)
    assert np.allclose(X[:, col["als_dot"]], [0.5, 0.0, 0.0])
    assert np.allclose(X[:, col["category_affinity"]], [0.0, 0.75, 0.25])
    # Affinities of years-old events decay to ~1e-52 (below float32): still the same shares, never NaN.
    tiny = build_features(cands, dataclasses.replace(context, category_affinity={1: 3e-52, 2: 1e-52}))
    assert np.allclose(tiny[:, col["category_affinity"]], [0.0, 0.75, 0.25])
    # Item 2 came from anchor 0, second in the history; item 5 from anchor 3, the latest; item 1 from none.
    assert X[1, col["anchor_recency"]] == 1
    assert X[2, col["anchor_recency"]] == 0
    assert np.isnan(X[0, col["anchor_recency"]])
    assert np.isnan(X[1, col["log_price"]])
    assert X[:, col["same_category_as_last"]].tolist() == [0.0, 1.0, 0.0]


def test_blend_prefers_items_found_early_by_several_sources() -> None:
    cands = merge(
        {
            "ann": SourceHits(np.array([1, 2]), np.array([1, 1], np.float32), np.full(2, -1)),
            "item_knn": SourceHits(np.array([2, 3]), np.array([1, 1], np.float32), np.full(2, 0)),
        }
    )
    blended = blend_scores(cands)
    assert int(cands.item_idx[np.argmax(blended)]) == 2


def test_lambdamart_learns_a_planted_signal() -> None:
    rng = np.random.default_rng(0)
    n_groups, per_group = 300, 20
    X = rng.normal(size=(n_groups * per_group, len(FEATURE_NAMES))).astype(np.float32)
    signal = X[:, FEATURE_NAMES.index("category_affinity")]
    y = (signal > 1.0).astype(np.float32)
    groups = np.full(n_groups, per_group)
    half = n_groups // 2 * per_group
    booster = train_ranker(X[:half], y[:half], groups[: n_groups // 2], X[half:], y[half:], groups[n_groups // 2 :])
    predicted = score(booster, X[half:])
    # Relevant items outscore the rest for nearly every held-out group.
    assert np.corrcoef(predicted, y[half:])[0, 1] > 0.7
    importance = booster.feature_importance("gain")
    assert FEATURE_NAMES[int(np.argmax(importance))] == "category_affinity"


def test_the_versions_blend_multipliers_scale_the_default_weights() -> None:
    from ranking.pipeline.state import RetrievalParams
    from ranking.ranker import DEFAULT_BLEND_WEIGHTS, blend_scores
    from ranking.retrieval import SourceHits, merge

    assert RetrievalParams.of({"anchors": 20}).blend_weights is None  # no multipliers: the defaults
    tuned = RetrievalParams.of({"blend_global": 0.0, "blend_neighbours": 2.0, "blend_ann": "x", "blend_fbt": -1})
    assert tuned.blend_weights is not None
    weights = dict(tuned.blend_weights)
    assert weights["trending"] == weights["popular"] == weights["new"] == 0.0
    assert weights["item_knn"] == 2 * DEFAULT_BLEND_WEIGHTS["item_knn"]
    assert weights["ease"] == 2 * DEFAULT_BLEND_WEIGHTS["ease"]
    # An unreadable or negative multiplier keeps its group's default.
    assert weights["ann"] == DEFAULT_BLEND_WEIGHTS["ann"]
    assert weights["fbt"] == DEFAULT_BLEND_WEIGHTS["fbt"]
    # Without the global sources, an item only they found ranks below every neighbour hit, which keeps its score.
    hits = {
        "popular": SourceHits(np.array([7]), np.array([1.0], np.float32), np.array([-1])),
        "item_knn": SourceHits(np.array([3]), np.array([0.5], np.float32), np.array([1])),
    }
    candidates = merge(hits)
    scores = dict(zip(candidates.item_idx.tolist(), blend_scores(candidates, weights).tolist(), strict=True))
    default = dict(zip(candidates.item_idx.tolist(), blend_scores(candidates).tolist(), strict=True))
    assert 0.0 < scores[7] < scores[3]
    assert scores[3] == pytest.approx(2 * default[3])


def test_weights_that_score_nothing_leave_the_default_order_among_what_they_do_not_score() -> None:
    """A version tuned without the global sources (validation users all have a history) served a visitor without
    one popular, trending and new items all at 0, in catalog order (found by a seventh tester, 6 December)."""
    from ranking.pipeline.state import RetrievalParams
    from ranking.ranker import blend_scores
    from ranking.retrieval import SourceHits, merge

    weights = RetrievalParams.of({"blend_global": 0.0}).blend_weights
    popular = SourceHits(np.array([9, 4, 6, 1]), np.array([4.0, 3.0, 2.0, 1.0], np.float32), np.full(4, -1))
    candidates = merge({"popular": popular})
    scores = blend_scores(candidates, weights)
    by_score = candidates.item_idx[np.argsort(-scores, kind="stable")].tolist()
    assert by_score == [9, 4, 6, 1]  # popularity's order, not the candidates' (catalog) order
    assert (scores > 0).all()
