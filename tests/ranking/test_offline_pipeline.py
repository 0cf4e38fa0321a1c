"""The ranker's offline training rows use serving's feature definitions as of the split time: affinities as the
online state keeps them, click-through of the last 24 hours before the split, ages and new arrivals from listing
times, nothing listed after the split, anchors from the latest history items; and the retrieval constants serving
uses are the ones the rows were built with."""

from __future__ import annotations

import numpy as np
import pytest

from events import features as online_features
from ranking import offline_pipeline, serving, sources
from ranking.dataset import ItemTable, log_from_arrays, user_events
from ranking.evaluation import eval_users, split_temporal
from ranking.ranker import FEATURE_NAMES, candidate_context, category_affinity
from ranking.training import TrainParams, train_sources

DAY = sources.SECONDS_PER_DAY
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def test_serving_retrieves_with_the_constants_the_training_rows_used() -> None:
    assert serving.ANCHORS == offline_pipeline.ANCHORS
    assert serving.ANCHOR_DECAY == offline_pipeline.ANCHOR_DECAY
    assert serving.HISTORY_LIMIT == offline_pipeline.HISTORY_LIMIT
    assert serving.QUOTAS == offline_pipeline.QUOTAS


def test_category_affinity_is_what_the_online_state_accumulates() -> None:
    now = 1_800_000_000.0
    category = np.array([3, 3, 7, 7, -1])
    types = np.array([online_features.VIEW, online_features.PURCHASE, online_features.CLICK,
                      online_features.RATING, online_features.PURCHASE])  # fmt: skip
    values = np.array([np.nan, np.nan, np.nan, 4.0, np.nan])
    ts = now - np.array([0.0, 30.0, 60.0, 1.0, 2.0]) * DAY
    # The online state: forward-decayed increments, read back decayed to now (events.online).
    stored: dict[int, float] = {}
    for c, t, v, when in zip(category.tolist(), types.tolist(), values.tolist(), ts.tolist(), strict=True):
        if c >= 0:
            weight = online_features.interest_weight(t, None if np.isnan(v) else v)
            stored[c] = stored.get(c, 0.0) + online_features.forward_decayed(weight, when)
    online = {c: s * online_features.decay_to(now) for c, s in stored.items()}

    offline = category_affinity(category, types, values, ts, now)

    assert offline.keys() == online.keys() == {3, 7}
    for c in online:
        assert offline[c] == pytest.approx(online[c], rel=1e-9)
    # Hand-computed: a view today (1) + a purchase 30 days ago (8 * 0.5); a click 60 days ago + a 4-star rating.
    assert offline[3] == pytest.approx(1 + 4)
    assert offline[7] == pytest.approx(2 * 0.25 + 4 * 2 ** (-1 / 30))


def test_candidate_context_computes_age_popularity_and_the_user_vector_dot() -> None:
    factors = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    context = candidate_context(
        model_idx=np.array([1, -1]), popularity=np.array([5.0, 9.0]), trend=np.array([1.5, 0.5]),
        category=np.array([2, 3]), price=np.array([10.0, np.nan]), created_ts=np.array([0.0, 5 * DAY]), now=10 * DAY,
        item_factors=factors, user_vector=np.array([3.0, 1.0], np.float32),
    )  # fmt: skip
    assert context.age_days.tolist() == [10.0, 5.0]
    assert context.popularity.tolist() == [9.0, 0.0]  # an item the version never saw: no popularity
    assert context.trend[0] == 0.5
    assert np.isnan(context.trend[1])
    assert context.als_dot[0] == 2.0
    assert np.isnan(context.als_dot[1])


def _world() -> tuple[ItemTable, object]:
    """Six items in two categories; item 5 is listed only after the split (day 20), item 4 just before it."""
    items = ItemTable(
        item_ids=np.arange(1, 7, dtype=np.int64), category=np.array([0, 0, 0, 1, 1, 1], np.int32),
        texts=["red mug", "blue mug", "green mug", "oak table", "pine table", "new table"],
        price=np.array([3.0, 4.0, 5.0, 90.0, 80.0, 70.0]),
        created_ts=np.array([0.0, 0.0, 0.0, 0.0, 13.0, 20.0]) * DAY,
    )  # fmt: skip
    # (customer, item pk, type, day): customer 1 views and buys mugs; customer 2 tables; item 1 gets views and a
    # click in the last 24 hours before the split (day 15), item 2 an older click.
    rows = [
        (1, 1, sources.PURCHASE, 1.0), (1, 2, sources.PURCHASE, 3.0), (2, 4, sources.PURCHASE, 2.0),
        (3, 1, sources.VIEW, 14.5), (3, 1, sources.VIEW, 14.6), (3, 1, sources.VIEW, 14.7),
        (3, 1, sources.CLICK, 14.8), (3, 2, sources.VIEW, 10.0), (3, 2, sources.CLICK, 10.1),
        (2, 1, sources.VIEW, 14.9),
        (1, 3, sources.PURCHASE, 20.0), (2, 6, sources.PURCHASE, 21.0), (2, 5, sources.PURCHASE, 25.0),
    ]  # fmt: skip
    customer, item, type_, day = (np.array(column) for column in zip(*rows, strict=True))
    log = log_from_arrays(
        customer=customer, item=item, type_=type_, value=np.full(customer.size, np.nan), ts=day * DAY, session=None,
        items=items,
    )  # fmt: skip
    return items, log


def test_feature_inputs_know_nothing_after_the_split() -> None:
    items, log = _world()
    split = split_temporal(log, holdout_days=10)  # reference day 25: the split at day 15
    assert split.reference_ts == 15 * DAY

    inputs = offline_pipeline.feature_inputs(split, items)

    assert inputs.exists.tolist() == [True, True, True, True, True, False]  # item 6 is listed on day 20
    assert inputs.new_items.tolist() == [4, 0, 1, 2, 3]  # newest listed first; never the future item
    # Click-through over the 24 hours before the split: item 1 had 4 views and 1 click; item 2's are older.
    assert inputs.ctr[0] == pytest.approx(0.25)
    assert np.isnan(inputs.ctr[1])


def test_training_rows_carry_the_served_features() -> None:
    items, log = _world()
    split = split_temporal(log, holdout_days=10)
    params = TrainParams(als_factors=2, als_iterations=3, neighbours_k=3, fbt_k=2, content_dims=2, content_k=2,
                         half_life_days=None, history_half_life_days=None)  # fmt: skip
    trained = train_sources(split.train, items, params, reference_ts=split.reference_ts, content_neighbours=False)
    users = eval_users(split, params)
    inputs = offline_pipeline.feature_inputs(split, items)

    data = offline_pipeline.user_candidates(trained, users, inputs)

    for row, cands in enumerate(data.candidates):
        assert 5 not in cands.item_idx.tolist()  # not listed yet at the split
        X = data.features[row]
        assert not np.isnan(X[:, COL["age_days"]]).any()
        assert np.allclose(X[:, COL["age_days"]], 15 - items.created_ts[cands.item_idx] / DAY)
        assert np.allclose(X[:, COL["log_price"]], np.log1p(items.price[cands.item_idx]))
        assert not np.isnan(X[:, COL["als_dot"]]).all()
        assert not np.isnan(X[:, COL["new_rank"]]).all()
    # Customer 1 (bought mugs 1 and 2, item 2 last): the other mug comes from a neighbour of a history item, and
    # its anchor's place in the history (0 = the latest) is a feature, as when served.
    row = users.user_ids.tolist().index(1)
    X, cands = data.features[row], data.candidates[row]
    anchored = cands.anchor >= 0
    assert anchored.any()
    assert set(X[anchored, COL["anchor_recency"]].tolist()) <= {0.0, 1.0}
    assert X[0, COL["history_length"]] == 2
    # Customer 1's affinities are all mugs: a mug candidate's share is 1, a table's 0.
    share = X[:, COL["category_affinity"]]
    assert share[items.category[cands.item_idx] == 0].tolist() == [1.0] * int(
        (items.category[cands.item_idx] == 0).sum()
    )
    assert (share[items.category[cands.item_idx] == 1] == 0).all()


def test_user_events_are_grouped_by_user_newest_first() -> None:
    _, log = _world()
    events = user_events(log)
    first = events.of(0)  # customer 1
    assert events.item[first].tolist() == [2, 1, 0]
    assert (np.diff(events.ts[first]) <= 0).all()
    assert events.of(-1) == slice(0, 0)
