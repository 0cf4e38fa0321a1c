"""ranking.sources and ranking.training on hand-made arrays: fold-in against implicit, EASE against numpy, the
neighbour tables, co-purchase rules, weights, popularity/trending, and a full training run in memory."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from events.models import Interaction
from ranking import sources
from ranking.dataset import ItemTable, Weighting, basket_matrix, log_from_arrays, user_item_matrix
from ranking.training import TrainParams, train_sources


def test_type_constants_match_the_interaction_model() -> None:
    assert (sources.VIEW, sources.CLICK, sources.ADD_TO_CART, sources.PURCHASE, sources.RATING) == (
        Interaction.Type.VIEW,
        Interaction.Type.CLICK,
        Interaction.Type.ADD_TO_CART,
        Interaction.Type.PURCHASE,
        Interaction.Type.RATING,
    )


def test_event_weights_per_type_and_rating_value() -> None:
    weights = sources.event_weights(
        [1, 2, 3, 4, 5, 5, 9], [np.nan, np.nan, np.nan, 3.0, 4.0, np.nan, 1.0], {1: 1.0, 2: 2.0, 3: 4.0, 4: 8.0},
        rating_base=0.5, rating_per_point=2.0,
    )  # fmt: skip
    # A rating of unknown value (the online history has none) weighs 1, not nothing.
    assert weights.tolist() == [1.0, 2.0, 4.0, 8.0, 8.5, 1.0, 0.0]
    with_rating_weight = sources.event_weights([5, 5], [np.nan, 2.0], {5: 3.0}, rating_per_point=1.0)
    assert with_rating_weight.tolist() == [3.0, 2.0]
    # A rating stored before values were bounded weighs as the nearest end of the documented 0..10 range.
    hostile = sources.event_weights([5, 5, 5], [1e308, -1e308, np.inf], {}, rating_base=0.5, rating_per_point=2.0)
    assert hostile.tolist() == [20.5, 0.5, 20.5]


def test_decay_and_confidence() -> None:
    assert sources.decay([0.0, 10.0, 20.0, -5.0], 10.0).tolist() == [1.0, 0.5, 0.25, 1.0]
    assert sources.decay([100.0], None).tolist() == [1.0]
    assert sources.confidence([0.0, 2.0], alpha=3.0).tolist() == [1.0, 7.0]
    log_conf = sources.confidence([1.0], alpha=2.0, scaling="log", eps=0.5)
    assert log_conf[0] == pytest.approx(1 + 2 * np.log1p(2.0))
    with pytest.raises(ValueError, match="scaling"):
        sources.confidence([1.0], alpha=1.0, scaling="bm25")


def test_fold_in_matches_implicit_recalculate_user() -> None:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(3)
    dense = (rng.random((60, 40)) < 0.15) * rng.integers(1, 6, (60, 40))
    confidences = sp.csr_matrix(1.0 + 4.0 * dense, dtype=np.float32).multiply(dense > 0).tocsr()
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=8, regularization=0.5, iterations=5, random_state=1)
        model.fit(confidences, show_progress=False)
    user = 7
    row = confidences[user]
    expected = model.recalculate_user(user, row)

    got = sources.fold_in(model.item_factors, row.indices, row.data, 0.5)

    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    # The stored YtY gives the same answer, and the batch version agrees row by row.
    yty = model.item_factors.astype(np.float64).T @ model.item_factors.astype(np.float64)
    np.testing.assert_allclose(sources.fold_in(model.item_factors, row.indices, row.data, 0.5, yty), got, rtol=1e-5)
    batch = sources.fold_in_batch(model.item_factors, confidences[[user, 0]], 0.5, yty)
    np.testing.assert_allclose(batch[0], got, rtol=1e-5)


def test_fold_in_edge_cases() -> None:
    factors = np.eye(3, dtype=np.float32)
    assert sources.fold_in(factors, [], [], 0.1).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="distinct"):
        sources.fold_in(factors, [1, 1], [2.0, 2.0], 0.1)
    # One item, orthonormal factors: (1 + (c - 1) + reg) x = c along that item's axis.
    x = sources.fold_in(factors, [2], [3.0], 0.5)
    np.testing.assert_allclose(x, [0.0, 0.0, 3.0 / 3.5], rtol=1e-6)


def test_history_confidences_aggregate_like_training() -> None:
    items, conf = sources.history_confidences(
        [4, 2, 4, 9], [1.0, 2.0, 3.0, 0.0], aggregate="max", alpha=2.0, scaling="linear", eps=1.0
    )
    assert items.tolist() == [2, 4]  # the zero-weight event is no evidence at all
    assert conf.tolist() == [5.0, 7.0]
    _, summed = sources.history_confidences([4, 4], [1.0, 3.0], aggregate="sum", alpha=1.0, scaling="linear", eps=1.0)
    assert summed.tolist() == [5.0]


def test_ease_matches_the_closed_form_in_numpy() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((30, 12)) < 0.3).astype(np.float64)
    lam = 5.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(12))
    expected = np.eye(12) - p / np.diag(p)  # B = I - P diagMat(1 / diag(P))

    got = sources.ease_fit(sp.csr_matrix(x), lam)

    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.all(np.diag(got) == 0.0)


def test_ease_survives_a_vanishing_lambda() -> None:
    # Two identical columns make X^T X singular; a lambda lost in rounding must not crash the training.
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.float64))
    b = sources.ease_fit(x, 0.0)
    assert np.isfinite(b).all()
    assert np.all(np.diag(b) == 0.0)


def test_reference_time_ignores_a_few_stray_events() -> None:
    items = ItemTable(item_ids=np.array([1]), category=np.array([-1], np.int32), texts=[""])
    day = sources.SECONDS_PER_DAY
    ts = np.concatenate([np.linspace(0, 100 * day, 5_000), [5_000 * day, 5_001 * day]])  # two clicks years later
    log = log_from_arrays(
        customer=np.ones(ts.size, np.int64), item=np.ones(ts.size, np.int64), type_=np.full(ts.size, 4),
        value=np.full(ts.size, np.nan), ts=ts, session=None, items=items,
    )  # fmt: skip
    assert log.reference_ts() == pytest.approx(100 * day, rel=1e-3)
    assert log.time_range()[1] == 5_001 * day
    small = log.subset(np.arange(ts.size) >= ts.size - 10)
    assert small.reference_ts() == 5_001 * day  # fewer than a thousand events: the latest one


def test_ease_lambda_is_relative_to_a_binary_matrix() -> None:
    binary = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1]], dtype=np.float32))
    assert sources.ease_lambda(binary, 100.0) == pytest.approx(100.0)
    assert sources.ease_lambda(binary * 0.5, 100.0) == pytest.approx(25.0)


def test_sparse_top_k_orders_pads_and_breaks_ties_by_column() -> None:
    m = sp.csr_matrix(np.array([[0.0, 0.5, 0.9, 0.5], [0.0, 0.0, 0.0, 0.0], [0.2, -1.0, 0.0, 0.0]]))
    idx, score = sources.sparse_top_k(m, 3)
    assert idx.tolist() == [[2, 1, 3], [-1, -1, -1], [0, -1, -1]]
    np.testing.assert_allclose(score, [[0.9, 0.5, 0.5], [0, 0, 0], [0.2, 0, 0]], rtol=1e-6)
    assert idx.dtype == np.int32
    assert score.dtype == np.float32


def test_dense_top_k_excludes_and_pads() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.0], [0.3, 0.2, 0.1, 0.4]], dtype=np.float32)
    exclude = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0]]))
    top = sources.dense_top_k(scores, 3, exclude, min_score=0.0)
    assert top.tolist() == [[2, 0, -1], [3, 0, 1]]


def test_neighbours_to_csr_round_trip() -> None:
    idx = np.array([[1, -1], [0, 2], [-1, -1]], dtype=np.int32)
    score = np.array([[0.5, 0.0], [0.3, 0.2], [0.0, 0.0]], dtype=np.float32)
    m = sources.neighbours_to_csr(idx, score, 3).toarray()
    np.testing.assert_allclose(m, [[0, 0.5, 0], [0.3, 0, 0.2], [0, 0, 0]])


def test_fbt_rules_support_confidence_and_lift() -> None:
    # Baskets over items 0..3: 0 and 1 go together in three of four baskets; 3 is everywhere (lift 1).
    baskets = sp.csr_matrix(np.array([[1, 1, 0, 1], [1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=np.float32))
    idx, conf, lift = sources.fbt_fit(baskets, k=3, min_count=2, min_confidence=0.1, min_lift=1.01)
    # 0 -> 1: together 3 times, 0 appears 3 times: confidence 1.0, lift 1.0 / (3/4) = 4/3.
    assert idx[0].tolist() == [1, -1, -1]
    assert conf[0, 0] == pytest.approx(1.0)
    assert lift[0, 0] == pytest.approx(4 / 3)
    # 3 co-occurs with everything but only at chance level (lift 1): never a rule. 2 -> 0 happens once: too rare.
    assert 3 not in idx[0]
    assert idx[3].tolist() == [-1, -1, -1]
    assert idx[2].tolist() == [-1, -1, -1]


def test_fbt_lift_of_padding_slots_is_zero_without_dividing_by_an_unbought_items_count() -> None:
    # Item 0 is in no basket: the padding slots (-1) once read its count, 0, and numpy warned of 0/0 at training.
    baskets = sp.csr_matrix(np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idx, conf, lift = sources.fbt_fit(baskets, k=3, min_count=2, min_confidence=0.1, min_lift=1.0)
    assert idx[1].tolist() == [2, -1, -1]
    assert lift[1, 0] == pytest.approx(1.0 / (2 / 3))
    assert not lift[idx < 0].any()
    assert np.isfinite(lift).all()


def test_popularity_and_trending_by_hand() -> None:
    day = sources.SECONDS_PER_DAY
    ref = 100 * day
    # Item 0: two events today and one 14 days ago; item 1: ten events 20 days ago, one today.
    items = np.array([0, 0, 0] + [1] * 10 + [1])
    ts = np.array([ref, ref, ref - 14 * day] + [ref - 20 * day] * 10 + [ref])
    w = np.ones(items.size)
    pop = sources.popularity(items, w, ts, reference_ts=ref, half_life_days=14.0, n_items=3)
    np.testing.assert_allclose(pop, [2.5, 1 + 10 * 2 ** (-20 / 14), 0.0], rtol=1e-6)
    trend = sources.trending(items, w, ts, reference_ts=ref, recent_days=7, baseline_days=28, smoothing=1.0, n_items=3)
    # Item 0: recent 2, baseline 1 -> expected 0.25; item 1: recent 1, baseline 10 -> expected 2.5.
    np.testing.assert_allclose(trend, [3 / 1.25, 2 / 3.5, 1.0], rtol=1e-6)


def test_content_vectors_are_unit_length_and_group_similar_texts() -> None:
    texts = ["red wool scarf", "blue wool scarf", "wool scarf winter", "ceramic tea mug", "tea mug large", ""]
    vectors = sources.content_fit(texts, dims=4, seed=0)
    assert vectors.shape == (6, 4)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[:5], axis=1), 1.0, rtol=1e-5)
    assert not vectors[5].any()
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 3]
    assert sims[3, 4] > sims[3, 0]


def _toy_catalog() -> tuple[ItemTable, dict[str, np.ndarray]]:
    """Two clusters of 6 items; 20 users each buying 4 items of one cluster over 50 days, in 2-item baskets."""
    rng = np.random.default_rng(11)
    items = ItemTable(
        item_ids=np.arange(100, 112, dtype=np.int64),
        category=np.array([1] * 6 + [2] * 6, dtype=np.int32),
        texts=[f"wool scarf {i}" for i in range(6)] + [f"tea mug {i}" for i in range(6)],
    )
    rows: dict[str, list] = {"customer": [], "item": [], "ts": [], "session": []}
    for user in range(20):
        cluster = user % 2
        chosen = rng.choice(6, 4, replace=False) + 6 * cluster
        for n, item in enumerate(chosen):
            rows["customer"].append(1000 + user)
            rows["item"].append(100 + item)
            rows["ts"].append(float(rng.integers(0, 50)) * sources.SECONDS_PER_DAY)
            rows["session"].append(f"s{user}-{n // 2}")
    return items, {key: np.array(value) for key, value in rows.items()}


def test_train_sources_in_memory_produces_consistent_arrays() -> None:
    items, rows = _toy_catalog()
    n = rows["item"].size
    log = log_from_arrays(
        customer=rows["customer"], item=rows["item"], type_=np.full(n, sources.PURCHASE), value=np.full(n, np.nan),
        ts=rows["ts"], session=rows["session"], items=items,
    )  # fmt: skip
    params = TrainParams(als_factors=4, neighbours_k=5, fbt_k=3, content_k=3, content_dims=4, fbt_min_lift=1.0)

    trained = train_sources(log, items, params)

    a = trained.arrays
    assert a["item_ids"].tolist() == list(range(100, 112))
    assert a["user_ids"].tolist() == list(range(1000, 1020))
    assert a["als_item_factors"].shape == (12, 4)
    assert a["als_item_factors"].dtype == np.float32
    assert a["als_user_factors"].shape == (20, 4)
    assert a["knn_idx"].shape == (12, 5)
    assert a["knn_idx"].dtype == np.int32
    assert a["ease_b"].shape == (12, 12)
    assert a["ease_idx"].shape == (12, 5)
    assert a["fbt_idx"].shape == (12, 3)
    assert a["content_vectors"].shape == (12, 4)
    assert a["popularity"].shape == (12,)
    assert a["trending"].dtype == np.float32
    # Neighbour tables never cross the clusters (no co-occurrence across them) and never hold the item itself.
    for table in ("knn_idx", "ease_idx", "fbt_idx"):
        idx = a[table]
        for item in range(12):
            found = idx[item][idx[item] >= 0]
            assert item not in found
            assert set((found // 6).tolist()) <= {item // 6}, (table, item, found)
    assert trained.info["sizes"] == {
        "n_users": 20, "n_items": 12, "n_interactions": 80, "n_user_items": 80, "n_baskets": 40,
    }  # fmt: skip


def test_user_item_matrix_aggregates_and_decays() -> None:
    items = ItemTable(item_ids=np.array([1, 2]), category=np.array([-1, -1], np.int32), texts=["", ""])
    day = sources.SECONDS_PER_DAY
    log = log_from_arrays(
        customer=[7, 7, 7, -1], item=[1, 1, 2, 2], type_=[1, 4, 1, 4], value=[np.nan] * 4,
        ts=[10 * day, 0.0, 10 * day, 10 * day], session=["", "", "", "anon"], items=items,
    )  # fmt: skip
    weighting = Weighting({1: 1.0, 4: 8.0}, 0.0, 1.0, half_life_days=10.0, aggregate="max")
    m = user_item_matrix(log, weighting, reference_ts=10 * day).toarray()
    # The old purchase (8, decayed to 4) beats today's view (1); the anonymous event has no user row.
    np.testing.assert_allclose(m, [[4.0, 1.0]])
    summed = user_item_matrix(log, Weighting({1: 1.0, 4: 8.0}, 0.0, 1.0, None, "sum"), reference_ts=10 * day)
    np.testing.assert_allclose(summed.toarray(), [[9.0, 1.0]])


def test_baskets_group_sessions_and_fall_back_to_days() -> None:
    items = ItemTable(item_ids=np.array([1, 2, 3]), category=np.full(3, -1, np.int32), texts=["", "", ""])
    day = sources.SECONDS_PER_DAY
    log = log_from_arrays(
        customer=[5, 5, 5, 6, 6, 6], item=[1, 2, 3, 1, 3, 2], type_=[4] * 6, value=[np.nan] * 6,
        ts=[0, 0, day, 0, 100, 3 * day], session=["inv1", "inv1", "inv2", "", "", ""], items=items,
    )  # fmt: skip
    baskets = basket_matrix(log, max_basket=10).toarray()
    # inv1 = {1, 2}; customer 6's first day = {1, 3}; inv2 and customer 6's later day have one item each.
    assert sorted(map(tuple, baskets.astype(int).tolist())) == [(1, 0, 1), (1, 1, 0)]
    assert basket_matrix(log, max_basket=1).shape[0] == 0
