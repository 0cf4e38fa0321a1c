"""The offline side of the one pipeline (ranking.pipeline.offline): the ranker's training rows are the served
stages' features as of the split time (affinities as the online state keeps them, click-through of the last 24
hours before the split, ages and new arrivals from listing times, nothing listed after the split is servable,
anchors from the latest history items), and the served lists honour the version's serving mode and exclusions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from events import features as online_features
from experiments.config import VariantConfig
from ranking import sources
from ranking.dataset import ItemTable, log_from_arrays, user_events
from ranking.evaluation import split_temporal
from ranking.pipeline import offline
from ranking.ranker import FEATURE_NAMES, candidate_context, category_affinity
from ranking.training import TrainParams, train_sources

DAY = sources.SECONDS_PER_DAY
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


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


PARAMS = TrainParams(als_factors=2, als_iterations=3, neighbours_k=3, fbt_k=2, content_dims=2, content_k=2,
                     half_life_days=None, history_half_life_days=None)  # fmt: skip


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

    trained = train_sources(split.train, items, PARAMS, reference_ts=split.reference_ts, content_neighbours=False)
    inputs = offline.offline_inputs(split, items, offline.TrainedModel(trained))

    assert inputs.available.tolist() == [True, True, True, True, True, False]  # item 6 is listed on day 20
    assert inputs.lists.new.tolist() == [5, 1, 2, 3, 4]  # newest listed first (catalog pks); never the future item
    # Click-through over the 24 hours before the split: item 1 had 4 views and 1 click; item 2's are older.
    assert inputs.ctr[0] == pytest.approx(0.25)
    assert np.isnan(inputs.ctr[1])


def test_training_rows_carry_the_served_features() -> None:
    items, log = _world()
    split = split_temporal(log, holdout_days=10)
    trained = train_sources(split.train, items, PARAMS, reference_ts=split.reference_ts, content_neighbours=False)
    model = offline.TrainedModel(trained)
    inputs = offline.offline_inputs(split, items, model)

    for user_index in range(split.train.n_users):
        pks, X = offline.candidate_rows(model, inputs, user_index)
        idx = items.index_of(pks)
        assert 6 not in pks.tolist()  # not listed yet at the split: never a training row
        assert not np.isnan(X[:, COL["age_days"]]).any()
        assert np.allclose(X[:, COL["age_days"]], 15 - items.created_ts[idx] / DAY)
        assert np.allclose(X[:, COL["log_price"]], np.log1p(items.price[idx]))
        assert not np.isnan(X[:, COL["als_dot"]]).all()
        assert not np.isnan(X[:, COL["new_rank"]]).all()
    # Customer 1 (bought mugs 1 and 2, item 2 last): the other mug comes from a neighbour of a history item, and
    # its anchor's place in the history (0 = the latest) is a feature, as when served.
    state = offline.retrieved(model, inputs, int(split.train.user_ids.tolist().index(1)), mode="pipeline", count=3)
    X = offline.stages.features(state, model, lambda pks: None)
    anchored = state.candidates.anchor >= 0
    assert anchored.any()
    assert set(X[anchored, COL["anchor_recency"]].tolist()) <= {0.0, 1.0}
    assert X[0, COL["history_length"]] == 2
    # Customer 1's affinities are all mugs: a mug candidate's share is 1, a table's 0.
    share = X[:, COL["category_affinity"]]
    mug = state.attributes.category == 0
    assert mug.any()
    assert share[mug].tolist() == [1.0] * int(mug.sum())
    assert (share[state.attributes.category == 1] == 0).all()


def test_user_events_are_grouped_by_user_newest_first() -> None:
    _, log = _world()
    events = user_events(log)
    first = events.of(0)  # customer 1
    assert events.item[first].tolist() == [2, 1, 0]
    assert (np.diff(events.ts[first]) <= 0).all()
    assert events.of(-1) == slice(0, 0)


def test_user_events_of_the_same_moment_come_the_later_row_first() -> None:
    # As the online state reads them (the later interaction first) and as the validation split counts them.
    items, _ = _world()
    log = log_from_arrays(
        customer=np.array([1, 1, 1, 2]), item=np.array([4, 1, 2, 3]), type_=np.full(4, sources.VIEW),
        value=np.full(4, np.nan), ts=np.array([5.0, 9.0, 9.0, 9.0]) * DAY, session=None, items=items,
    )  # fmt: skip
    events = user_events(log)
    assert events.item[events.of(0)].tolist() == [1, 0, 3]  # items 2 then 1 at day 9 (the later row first), 4
    assert events.item[events.of(1)].tolist() == [2]


def _rated_world() -> tuple[ItemTable, object]:
    """Customers 1-6 rate mugs (items 1-3) and tables (4-6); customer 7 rated mug 1 and bought table 4."""
    items = ItemTable(
        item_ids=np.arange(1, 7, dtype=np.int64), category=np.array([0, 0, 0, 1, 1, 1], np.int32),
        texts=["red mug", "blue mug", "green mug", "oak table", "pine table", "birch table"],
        price=np.full(6, 10.0), created_ts=np.zeros(6),
    )  # fmt: skip
    rows = [(c, i, sources.RATING, 4.0, float(c + i)) for c in range(1, 7) for i in range(1, 7) if (c + i) % 3]
    rows += [(7, 1, sources.RATING, 5.0, 30.0), (7, 4, sources.PURCHASE, np.nan, 31.0)]
    rows += [(c, i, sources.RATING, 3.0, 50.0) for c in range(1, 8) for i in (2, 5)]  # the held-out part
    customer, item, type_, value, day = (np.array(column) for column in zip(*rows, strict=True))
    log = log_from_arrays(
        customer=customer, item=item, type_=type_, value=value.astype(float), ts=day * DAY, session=None, items=items
    )  # fmt: skip
    return items, log


def test_served_lists_leave_out_what_the_user_had_and_cover_every_test_user() -> None:
    items, log = _rated_world()
    split = split_temporal(log, holdout_days=10)
    trained = train_sources(split.train, items, PARAMS, reference_ts=split.reference_ts, content_neighbours=False)

    lists = offline.served_lists(trained, split, items, k=4)

    assert lists.shape == (split.n_test_users, 4)
    assert (lists[:, 0] >= 0).all()  # every test user gets a list
    seen = offline.user_events(split.train)
    for row in range(split.n_test_users):
        had = set(seen.item[seen.of(int(split.user_index[row]))].tolist())  # every event here is a rating/purchase
        assert not had & set(lists[row][lists[row] >= 0].tolist())
    # Turned off, customer 7's rated mug may come back; the purchase stays out.
    row7 = split.user_ids.tolist().index(7)
    keep_rated = dataclasses.replace(VariantConfig(), exclude_rated=False, diversity_cap=1.0)
    again = offline.served_lists(trained, split, items, k=6, config=keep_rated, rows=[row7])[0]
    assert 0 in again.tolist()
    assert 3 not in again.tolist()
    quality = offline.served_quality(split, lists, k=4, item_category=items.category)
    assert set(quality) == {"ndcg@4", "hit_rate@4", "coverage@4", "max_category_share"}
    assert 0 < quality["hit_rate@4"] <= 1


def test_a_source_serving_mode_serves_that_source_through_the_re_ranker() -> None:
    items, log = _rated_world()
    split = split_temporal(log, holdout_days=10)
    trained = train_sources(split.train, items, PARAMS, reference_ts=split.reference_ts, content_neighbours=False)
    model = offline.TrainedModel(trained)
    inputs = offline.offline_inputs(split, items, model)

    plain = dataclasses.replace(VariantConfig(), diversity_cap=1.0)
    for mode in ("source:popularity", "source:ease"):
        source = offline.serve_source(mode)
        lists = offline.served_lists(model, split, items, k=3, serve=mode, inputs=inputs, config=plain)
        capped = offline.served_lists(model, split, items, k=3, serve=mode, inputs=inputs)
        for row in range(split.n_test_users):
            state = offline.retrieved(model, inputs, int(split.user_index[row]), mode=mode, count=3)
            if state.mode == "pipeline":
                # The source found fewer than 3 candidates this user can be shown: the whole pipeline answered.
                assert state.hits is not None
                found = state.hits.get(source)
                assert found is None or int((~np.isin(found.item_idx, state.left_out)).sum()) < 3
                continue
            assert set(state.hits) == {source}  # candidates of that source only
            offline.finish(state, model, inputs, None, plain, seed=1)
            assert state.scorer == mode
            # Its own score decides the order (what the user had left out) ...
            hits = state.hits[source]
            had = set(offline.stages.had_items(state, plain).tolist())
            own = dict(zip(hits.item_idx.tolist(), hits.score.tolist(), strict=True))
            expected = [pk for pk in hits.item_idx.tolist() if pk not in had][:3]
            served_pks = items.item_ids[lists[row][lists[row] >= 0]].tolist()
            assert not had & set(served_pks)
            assert [own[pk] for pk in served_pks] == pytest.approx([own[pk] for pk in expected])  # ties may swap
            # ... and the re-ranker's category cap still applies (one per category in 3 when there is a choice).
            served = capped[row][capped[row] >= 0]
            categories = set(items.category[items.index_of(expected)].tolist())
            if len(categories) > 1:
                assert np.unique(items.category[served]).size > 1
    with pytest.raises(ValueError, match="serve must be"):
        offline.served_lists(model, split, items, serve="source:nope")
