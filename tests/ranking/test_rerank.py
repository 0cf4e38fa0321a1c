"""Tests for ranking.rerank: each rule kind, pins, diversity caps, exploration and invariants."""

# Plain asserts are how pytest tests check; pyproject ignores S101 too, this keeps bare --select runs clean.
# ruff: noqa: S101

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ranking.rerank import Candidates, RerankConfig, RerankResult, Rule, rerank


def make_candidates(
    n: int,
    *,
    score: list[float] | np.ndarray | None = None,
    category: list[int] | np.ndarray | None = None,
    brand: list[int] | np.ndarray | None = None,
    available: list[bool] | np.ndarray | None = None,
    exposure: list[float] | np.ndarray | None = None,
    clicks: list[float] | np.ndarray | None = None,
) -> Candidates:
    """Items 100..100+n-1, scores descending by default, every item its own category, no brand."""
    return Candidates(
        item_idx=np.arange(100, 100 + n),
        score=np.linspace(1.0, 0.0, n) if score is None else score,
        category=np.arange(n) if category is None else category,
        brand=np.full(n, -1) if brand is None else brand,
        available=np.ones(n, dtype=bool) if available is None else available,
        exposure=np.zeros(n) if exposure is None else exposure,
        clicks=clicks,
    )


def items(result: RerankResult) -> list[int]:
    return result.item_idx.tolist()


# --- filters -------------------------------------------------------------------------------


def test_plain_score_order_without_rules() -> None:
    cands = make_candidates(5, score=[0.1, 0.9, 0.5, 0.7, 0.3])
    result = rerank(cands, [], RerankConfig(count=3))
    assert items(result) == [101, 103, 102]
    np.testing.assert_allclose(result.score, [0.9, 0.7, 0.5])
    assert result.fired == ((), (), ())
    assert not result.explored.any()
    assert not result.pinned.any()


def test_unavailable_and_excluded_are_dropped() -> None:
    cands = make_candidates(6, available=[True, False, True, True, True, True])
    config = RerankConfig(count=10, exclude_idx=np.array([102, 104, 999]))
    result = rerank(cands, [], config)
    assert items(result) == [100, 103, 105]
    assert result.dropped == {"duplicate": 0, "unavailable": 1, "excluded": 2, "blocked": 0}


def test_each_row_is_dropped_for_its_first_reason_only() -> None:
    cands = make_candidates(3, available=[False, True, True])
    rules = [Rule(1, "block", "item", 100), Rule(2, "block", "item", 101)]
    result = rerank(cands, rules, RerankConfig(count=5, exclude_idx=np.array([100, 101])))
    # 100: unavailable (also excluded and blocked); 101: excluded (also blocked).
    assert result.dropped == {"duplicate": 0, "unavailable": 1, "excluded": 1, "blocked": 0}
    assert items(result) == [102]


def test_duplicate_rows_keep_the_best_score() -> None:
    cands = Candidates(
        item_idx=np.array([7, 8, 7]),
        score=np.array([0.1, 0.5, 0.9]),
        category=np.array([0, 1, 0]),
        brand=np.array([-1, -1, -1]),
        available=np.array([True, True, True]),
        exposure=np.zeros(3),
    )
    result = rerank(cands, [], RerankConfig(count=5))
    assert items(result) == [7, 8]
    np.testing.assert_allclose(result.score, [0.9, 0.5])
    assert result.dropped["duplicate"] == 1


@pytest.mark.parametrize(
    ("target", "value", "expected"),
    [
        ("item", 101, [100, 102, 103, 104, 105]),
        ("category", 7, [101, 102, 104]),
        ("brand", 3, [100, 101, 103, 105]),
    ],
)
def test_block_removes_by_target(target: str, value: int, expected: list[int]) -> None:
    cands = make_candidates(6, category=[7, 1, 2, 7, 3, 7], brand=[-1, 5, 3, -1, 3, -1])
    result = rerank(cands, [Rule(9, "block", target, value)], RerankConfig(count=10, diversity="off"))  # type: ignore[arg-type]
    assert items(result) == expected
    assert result.dropped["blocked"] == 6 - len(expected)


# --- boost / bury ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "value"),
    [("item", 104), ("category", 40), ("brand", 8)],
)
def test_boost_by_target_lifts_item_to_top(target: str, value: int) -> None:
    cands = make_candidates(5, category=[0, 1, 2, 3, 40], brand=[-1, -1, -1, -1, 8])
    # Scores 1.0 .. 0.0, spread 1.0: weight 1.5 takes item 104 from 0.0 to 1.5.
    rule = Rule(5, "boost", target, value, weight=1.5)  # type: ignore[arg-type]
    result = rerank(cands, [rule], RerankConfig(count=5))
    assert items(result) == [104, 100, 101, 102, 103]
    assert result.score[0] == pytest.approx(1.5)
    assert result.fired == ((5,), (), (), (), ())


@pytest.mark.parametrize(
    ("target", "value"),
    [("item", 100), ("category", 40), ("brand", 8)],
)
def test_bury_by_target_moves_item_down(target: str, value: int) -> None:
    cands = make_candidates(5, category=[40, 1, 2, 3, 4], brand=[8, -1, -1, -1, -1])
    # Item 100 scores 1.0; bury 0.6 * spread 1.0 -> 0.4, between 101 (0.75) ... 103 (0.25).
    rule = Rule(6, "bury", target, value, weight=0.6)  # type: ignore[arg-type]
    result = rerank(cands, [rule], RerankConfig(count=5))
    assert items(result) == [101, 102, 100, 103, 104]
    assert result.score[2] == pytest.approx(0.4)
    assert result.fired[2] == (6,)


def test_weights_are_relative_to_score_spread() -> None:
    small = make_candidates(3, score=[0.03, 0.02, 0.01])
    large = make_candidates(3, score=[300.0, 200.0, 100.0])
    rule = Rule(1, "boost", "item", 102, weight=0.75)
    # 0.75 of the spread puts item 102 between the first and second item on both scales.
    assert items(rerank(small, [rule], RerankConfig(count=3))) == [100, 102, 101]
    assert items(rerank(large, [rule], RerankConfig(count=3))) == [100, 102, 101]


def test_matching_rules_stack_and_all_fire() -> None:
    cands = make_candidates(3, category=[0, 1, 1], brand=[-1, 4, 4])
    rules = [
        Rule(3, "boost", "category", 1, weight=0.5),
        Rule(1, "boost", "brand", 4, weight=0.5),
        Rule(2, "bury", "item", 101, weight=2.0),
    ]
    result = rerank(cands, rules, RerankConfig(count=3, diversity="off"))
    # 102: 0.0 + 0.5 + 0.5 = 1.0 (ties 100 at 1.0, stable order keeps 100 first);
    # 101: 0.5 + 0.5 + 0.5 - 2.0 = -0.5.
    assert items(result) == [100, 102, 101]
    np.testing.assert_allclose(result.score, [1.0, 1.0, -0.5])
    assert result.fired == ((), (1, 3), (1, 2, 3))


# --- pins --------------------------------------------------------------------------------------


def test_pin_places_item_and_shifts_others_down() -> None:
    cands = make_candidates(6)
    result = rerank(cands, [Rule(7, "pin", "item", 105, position=1)], RerankConfig(count=4))
    assert items(result) == [100, 105, 101, 102]
    assert result.pinned.tolist() == [False, True, False, False]
    assert result.fired[1] == (7,)


def test_two_pins_on_one_position_lower_rule_id_first() -> None:
    cands = make_candidates(6)
    rules = [Rule(9, "pin", "item", 104, position=0), Rule(3, "pin", "item", 105, position=0)]
    result = rerank(cands, rules, RerankConfig(count=4))
    assert items(result) == [105, 104, 100, 101]


def test_pin_skipped_when_item_is_missing_blocked_or_out_of_range() -> None:
    cands = make_candidates(6, available=[True, True, True, True, True, False])
    rules = [
        Rule(1, "pin", "item", 999, position=0),  # not a candidate
        Rule(2, "pin", "item", 105, position=0),  # unavailable
        Rule(3, "pin", "item", 104, position=0),
        Rule(4, "block", "item", 104),  # blocks beat pins
        Rule(5, "pin", "item", 103, position=4),  # position >= count
    ]
    result = rerank(cands, rules, RerankConfig(count=4))
    assert result.skipped_pins == (1, 2, 3, 5)
    assert items(result) == [100, 101, 102, 103]
    assert not result.pinned.any()


def test_same_item_pinned_twice_keeps_the_first_pin() -> None:
    cands = make_candidates(5)
    rules = [Rule(2, "pin", "item", 104, position=3), Rule(1, "pin", "item", 104, position=1)]
    result = rerank(cands, rules, RerankConfig(count=4))
    assert items(result) == [100, 104, 101, 102]
    assert result.skipped_pins == (2,)


def test_pin_beyond_a_short_list_goes_to_its_end() -> None:
    cands = make_candidates(3)
    result = rerank(cands, [Rule(1, "pin", "item", 100, position=8)], RerankConfig(count=10))
    assert items(result) == [101, 102, 100]
    assert result.pinned.tolist() == [False, False, True]


def test_pins_win_over_diversity_caps_and_count_towards_them() -> None:
    # Category 0 has the four best items; cap = floor(0.34 * 6) = 2.
    category = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0]
    cands = make_candidates(14, category=category)
    rules = [Rule(1, "pin", "item", 113, position=0), Rule(2, "pin", "item", 103, position=5)]
    result = rerank(cands, rules, RerankConfig(count=6, max_category_share=0.34))
    assert result.item_idx[0] == 113
    assert result.item_idx[5] == 103
    # Both pins are category 0, which already fills its cap: no other category-0 item gets in.
    cats = np.asarray(category)[result.item_idx - 100]
    assert (cats == 0).sum() == 2
    assert items(result) == [113, 104, 105, 107, 108, 103]


# --- diversity ---------------------------------------------------------------------------------


def test_category_cap_is_floor_of_share_times_count() -> None:
    assert RerankConfig(count=10, max_category_share=0.3).category_cap == 3
    assert RerankConfig(count=100, max_category_share=0.29).category_cap == 29
    assert RerankConfig(count=2, max_category_share=0.3).category_cap == 1


def test_category_cap_respected() -> None:
    category = [0] * 6 + [1] * 6 + [2] * 6
    cands = make_candidates(18, category=category)
    result = rerank(cands, [], RerankConfig(count=6, max_category_share=0.34))
    cats = np.asarray(category)[result.item_idx - 100]
    assert np.bincount(cats).max() == 2
    # Best-first within the cap: two of each category, each category's best items.
    assert items(result) == [100, 101, 106, 107, 112, 113]


def test_brand_cap_respected_and_unbranded_not_capped() -> None:
    brand = [1, 1, 1, -1, -1, -1, 2, 2]
    cands = make_candidates(8, brand=brand)
    result = rerank(cands, [], RerankConfig(count=6, max_category_share=1.0, max_per_brand=1))
    # Five items fit one-per-brand; the sixth slot needs the brand cap relaxed to 2.
    assert items(result) == [100, 103, 104, 105, 106, 101]


def test_caps_relaxed_when_candidates_too_uniform() -> None:
    # Eight items of category 0 and two of category 1, cap 3: the caps cannot fill 10 slots.
    category = [0] * 8 + [1] * 2
    cands = make_candidates(10, category=category)
    result = rerank(cands, [], RerankConfig(count=10, max_category_share=0.3))
    assert sorted(items(result)) == list(range(100, 110))
    # Diverse items are used up first, then the cap is raised one step at a time.
    assert items(result)[:5] == [100, 101, 102, 108, 109]


def test_single_category_still_fills_the_list() -> None:
    cands = make_candidates(12, category=[5] * 12, brand=[1] * 12)
    result = rerank(cands, [], RerankConfig(count=10, max_per_brand=2))
    assert items(result) == list(range(100, 110))


def test_diversity_off_is_pure_score_order() -> None:
    category = [0] * 10
    cands = make_candidates(10, category=category, brand=[1] * 10)
    result = rerank(cands, [], RerankConfig(count=5, diversity="off", max_per_brand=1))
    assert items(result) == [100, 101, 102, 103, 104]


def test_mmr_with_lambda_one_is_greedy_order() -> None:
    rng = np.random.default_rng(5)
    cands = make_candidates(40, score=rng.random(40), category=rng.integers(0, 6, 40))
    greedy = rerank(cands, [], RerankConfig(count=10))
    mmr = rerank(cands, [], RerankConfig(count=10, diversity="mmr", mmr_lambda=1.0))
    assert items(mmr) == items(greedy)


def test_mmr_interleaves_categories() -> None:
    # Category 0 holds the three best items but a low lambda prefers a new category each time.
    cands = make_candidates(6, score=[1.0, 0.99, 0.98, 0.5, 0.4, 0.3], category=[0, 0, 0, 1, 1, 2])
    result = rerank(cands, [], RerankConfig(count=3, diversity="mmr", mmr_lambda=0.3, max_category_share=1.0))
    assert items(result) == [100, 103, 105]


# --- exploration -------------------------------------------------------------------------------


def test_exploration_off_is_deterministic_score_order() -> None:
    rng = np.random.default_rng(11)
    cands = make_candidates(50, score=rng.random(50), exposure=rng.random(50))
    config = RerankConfig(count=10, exploration_share=0.0, diversity="off")
    first = rerank(cands, [], config)
    assert items(first) == (100 + np.argsort(-cands.score)[:10]).tolist()
    assert items(rerank(cands, [], config)) == items(first)
    assert not first.explored.any()


def test_exploration_slots_count_position_and_reproducibility() -> None:
    rng = np.random.default_rng(12)
    cands = make_candidates(60, score=rng.random(60), exposure=rng.integers(0, 100, 60).astype(float))
    pins = [Rule(1, "pin", "item", 159, position=3)]
    config = RerankConfig(count=10, exploration_share=0.3, seed=42, diversity="off")
    result = rerank(cands, pins, config)
    # round(0.3 * 10) = 3 explored slots, never position 0 or the pinned position 3.
    assert result.explored.sum() == 3
    assert not result.explored[0]
    assert not result.explored[3]
    assert result.item_idx[3] == 159
    # Explored items come from outside the exploitation list (the best 9 unpinned items, one
    # per free slot) and from the under-exposed half of what is left.
    by_score = (100 + np.argsort(-cands.score)).tolist()
    exploit_top = set([i for i in by_score if i != 159][:9])
    explored_items = result.item_idx[result.explored]
    assert not exploit_top & set(explored_items.tolist())
    rest = [i for i in range(100, 160) if i not in exploit_top and i != 159]
    median = np.median(cands.exposure[np.array(rest) - 100])
    assert (cands.exposure[explored_items - 100] <= median).all()
    # The exploited slots keep score order.
    exploited = result.score[~result.explored & ~result.pinned]
    assert (np.diff(exploited) <= 0).all()
    again = rerank(cands, pins, config)
    assert items(again) == items(result)
    assert again.explored.tolist() == result.explored.tolist()


def test_exploration_varies_with_seed() -> None:
    rng = np.random.default_rng(13)
    cands = make_candidates(200, score=rng.random(200))
    lists = {
        tuple(items(rerank(cands, [], RerankConfig(count=10, exploration_share=0.5, seed=s, diversity="off"))))
        for s in range(5)
    }
    assert len(lists) > 1


def test_exploration_rounds_half_up_and_is_limited_by_slots() -> None:
    assert RerankConfig(count=10, exploration_share=0.25).n_explore == 3
    cands = make_candidates(30)
    # count 2: one slot besides position 0, so at most one explored slot.
    result = rerank(cands, [], RerankConfig(count=2, exploration_share=1.0, seed=0))
    assert result.explored.tolist() == [False, True]


def test_exploration_with_no_spare_candidates_keeps_the_list() -> None:
    cands = make_candidates(5)
    result = rerank(cands, [], RerankConfig(count=5, exploration_share=0.4, seed=0))
    assert items(result) == [100, 101, 102, 103, 104]
    assert not result.explored.any()


def _explored_counts(cands: Candidates, config: dict[str, object], seeds: int = 300) -> np.ndarray:
    """How often each candidate got an exploration slot over ``seeds`` requests."""
    counts = np.zeros(len(cands), np.int64)
    for seed in range(seeds):
        result = rerank(cands, [], RerankConfig(seed=seed, **config))  # type: ignore[arg-type]
        counts[result.item_idx[result.explored] - 100] += 1
    return counts


def test_thompson_sampling_favours_the_never_shown_and_the_clicked() -> None:
    # Items 0-4 fill the list; the pool is 5-11. Items 5-9 were each seen 40 times without a click, item 10 never
    # shown (Beta(1, 1)), item 11 seen 40 times with 30 clicks (Beta(31, 11)).
    exposure = [0.0] * 5 + [40.0] * 5 + [0.0, 40.0]
    clicks = [0.0] * 11 + [30.0]
    cands = make_candidates(12, exposure=exposure, clicks=clicks)
    counts = _explored_counts(cands, {"count": 5, "exploration_share": 0.2, "diversity": "off"})
    assert counts[:5].sum() == 0  # the exploited items are never "explored"
    # One slot per list: the clicked item's posterior (mean 0.74) beats the unseen item's uniform draw about
    # three times in four, and both beat the unclicked items' Beta(1, 41) nearly always.
    assert counts[11] > counts[10] > counts[5:10].sum()
    assert counts[11] + counts[10] >= 0.95 * 300


def test_thompson_counts_exposure_not_score() -> None:
    # The pool's scores descend but every pool item has the same posterior: each gets its share of the slots.
    cands = make_candidates(14, exposure=[0.0] * 4 + [3.0] * 10)
    counts = _explored_counts(cands, {"count": 4, "exploration_share": 0.25, "diversity": "off"}, seeds=600)
    pool = counts[4:]
    assert pool.min() > 0.5 * pool.mean()


def test_epsilon_greedy_draws_the_under_exposed_uniformly() -> None:
    rng = np.random.default_rng(3)
    exposure = np.concatenate([np.zeros(5), rng.integers(0, 3, 10), np.full(10, 500.0)])
    clicks = np.concatenate([np.zeros(15), np.full(10, 400.0)])
    cands = make_candidates(25, exposure=exposure, clicks=clicks)
    counts = _explored_counts(
        cands, {"count": 5, "exploration_share": 0.2, "diversity": "off", "exploration": "epsilon_greedy"}, seeds=600
    )
    # The heavily shown items (above the pool's median exposure) never explore, however well they click.
    assert counts[15:].sum() == 0
    assert counts[5:15].min() > 0.5 * counts[5:15].mean()


def test_exploration_turned_off_never_consults_the_counters() -> None:
    cands = make_candidates(20, exposure=[50.0] * 10 + [0.0] * 10, clicks=[0.0] * 19 + [0.0])
    config = RerankConfig(count=10, exploration_share=0.0, seed=1, exploration="thompson")
    result = rerank(cands, [], config)
    assert items(result) == list(range(100, 110))
    assert not result.explored.any()


def test_mmr_respects_brand_and_category_caps() -> None:
    rng = np.random.default_rng(21)
    category = rng.integers(0, 4, 60)
    brand = rng.integers(0, 5, 60)
    cands = make_candidates(60, score=rng.random(60), category=category, brand=brand)
    result = rerank(cands, [], RerankConfig(count=10, diversity="mmr", mmr_lambda=0.5, max_per_brand=2))
    rows = result.item_idx - 100
    assert np.bincount(category[rows]).max() <= 3
    assert np.bincount(brand[rows]).max() <= 2
    greedy = rerank(cands, [], RerankConfig(count=10, max_per_brand=2))
    assert items(result) != items(greedy)


# --- edge cases and validation -----------------------------------------------------------------


def test_empty_candidates_and_zero_count() -> None:
    empty = make_candidates(0)
    result = rerank(empty, [Rule(1, "pin", "item", 5, position=0)], RerankConfig(count=5))
    assert items(result) == []
    assert result.skipped_pins == (1,)
    assert items(rerank(make_candidates(4), [], RerankConfig(count=0))) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "shout", "target": "item"}, "unknown kind"),
        ({"kind": "boost", "target": "shop"}, "unknown target"),
        ({"kind": "boost", "target": "item", "weight": -1.0}, "weight"),
        ({"kind": "pin", "target": "category"}, "pins must target an item"),
        ({"kind": "pin", "target": "item"}, "position"),
        ({"kind": "boost", "target": "brand", "target_value": -1}, "target_value"),
    ],
)
def test_invalid_rules(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"rule_id": 1, "target_value": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        Rule(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": -1}, "count"),
        ({"count": 5, "max_category_share": 0.0}, "max_category_share"),
        ({"count": 5, "max_per_brand": 0}, "max_per_brand"),
        ({"count": 5, "exploration_share": 1.5}, "exploration_share"),
        ({"count": 5, "diversity": "random"}, "diversity"),
        ({"count": 5, "mmr_lambda": 2.0}, "mmr_lambda"),
        ({"count": 5, "exploration": "ucb"}, "exploration"),
    ],
)
def test_invalid_config(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RerankConfig(**kwargs)  # type: ignore[arg-type]


def test_invalid_candidates() -> None:
    with pytest.raises(ValueError, match="as many rows"):
        make_candidates(3, category=[1, 2])
    with pytest.raises(ValueError, match="finite"):
        make_candidates(2, score=[1.0, math.nan])
    with pytest.raises(ValueError, match="clicks"):
        make_candidates(2, clicks=[-1.0, 0.0])


# --- properties --------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Candidates, list[Rule], RerankConfig]:
    n = draw(st.integers(0, 40))
    item_idx = np.array(draw(st.lists(st.integers(0, 199), min_size=n, max_size=n, unique=True)), dtype=np.int64)
    cands = Candidates(
        item_idx=item_idx,
        score=np.array(draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n))),
        category=np.array(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), dtype=np.int64),
        brand=np.array(draw(st.lists(st.integers(-1, 4), min_size=n, max_size=n)), dtype=np.int64),
        available=np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool),
        exposure=np.array(draw(st.lists(st.floats(0, 1000), min_size=n, max_size=n))),
    )
    known_items = item_idx.tolist() or [0]
    rules = []
    for rule_id in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["boost", "bury", "block", "pin"]))
        target = "item" if kind == "pin" else draw(st.sampled_from(["item", "category", "brand"]))
        value = {
            "item": draw(st.sampled_from(known_items)),
            "category": draw(st.integers(0, 5)),
            "brand": draw(st.integers(0, 4)),
        }[target]
        rules.append(
            Rule(
                rule_id=rule_id,
                kind=kind,
                target=target,
                target_value=value,
                weight=draw(st.floats(0, 3)),
                position=draw(st.integers(0, 12)) if kind == "pin" else None,
            )
        )
    config = RerankConfig(
        count=draw(st.integers(0, 12)),
        max_category_share=draw(st.floats(0.05, 1.0)),
        max_per_brand=draw(st.none() | st.integers(1, 4)),
        exclude_idx=np.array(draw(st.lists(st.sampled_from(known_items), max_size=5)), dtype=np.int64),
        exploration_share=draw(st.sampled_from([0.0, 0.1, 0.3, 0.5])),
        seed=draw(st.integers(0, 2**16)),
        diversity=draw(st.sampled_from(["greedy", "mmr", "off"])),
        mmr_lambda=draw(st.floats(0, 1)),
    )
    return cands, rules, config


def survivors(cands: Candidates, rules: list[Rule], config: RerankConfig) -> np.ndarray:
    """Items left after the filters, computed independently of rerank()."""
    ok = cands.available & ~np.isin(cands.item_idx, config.exclude_idx)
    attributes = {"item": cands.item_idx, "category": cands.category, "brand": cands.brand}
    for rule in rules:
        if rule.kind == "block":
            ok &= attributes[rule.target] != rule.target_value
    return cands.item_idx[ok]


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_invariants(scenario: tuple[Candidates, list[Rule], RerankConfig]) -> None:
    cands, rules, config = scenario
    result = rerank(cands, rules, config)
    allowed = survivors(cands, rules, config)
    out = result.item_idx
    assert len(set(out.tolist())) == out.size
    assert out.size == min(config.count, allowed.size)
    assert np.isin(out, allowed).all()
    assert len(result.score) == len(result.fired) == len(result.explored) == len(result.pinned) == out.size
    assert not (result.explored & result.pinned).any()
    if out.size:
        assert not result.explored[0]
    # Every pin is either placed (flagged, with its rule in the trace) or reported as skipped.
    for rule in rules:
        if rule.kind != "pin" or rule.rule_id in result.skipped_pins:
            continue
        slot = int(np.flatnonzero(out == rule.target_value)[0])
        assert result.pinned[slot]
        assert rule.rule_id in result.fired[slot]
    # Reproducible for a fixed seed.
    again = rerank(cands, rules, config)
    assert again.item_idx.tolist() == out.tolist()


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 30),
    count=st.integers(1, 12),
)
def test_property_pins_at_their_positions(data: st.DataObject, n: int, count: int) -> None:
    cands = make_candidates(
        n,
        score=np.array(data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n))),
        category=np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))),
    )
    length = min(count, n)
    n_pins = data.draw(st.integers(0, length))
    positions = data.draw(st.permutations(range(length)))[:n_pins]
    pinned_items = data.draw(st.permutations(range(100, 100 + n)))[:n_pins]
    rules = [
        Rule(rule_id=i, kind="pin", target="item", target_value=item, position=pos)
        for i, (item, pos) in enumerate(zip(pinned_items, positions, strict=True))
    ]
    config = RerankConfig(
        count=count,
        exploration_share=data.draw(st.sampled_from([0.0, 0.5])),
        seed=0,
        diversity=data.draw(st.sampled_from(["greedy", "mmr", "off"])),
    )
    result = rerank(cands, rules, config)
    assert result.skipped_pins == ()
    for item, pos in zip(pinned_items, positions, strict=True):
        assert result.item_idx[pos] == item
    assert result.pinned.sum() == n_pins


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 40),
    count=st.integers(1, 12),
    share=st.floats(0.05, 1.0),
    exploration=st.sampled_from([0.0, 0.3]),
    diversity=st.sampled_from(["greedy", "mmr"]),
)
def test_property_category_cap_holds_with_enough_diversity(
    data: st.DataObject, n: int, count: int, share: float, exploration: float, diversity: str
) -> None:
    category = np.array(data.draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)))
    cands = make_candidates(
        n, score=np.array(data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n))), category=category
    )
    config = RerankConfig(
        count=count,
        max_category_share=share,
        exploration_share=exploration,
        seed=1,
        diversity=diversity,  # type: ignore[arg-type]
    )
    cap = config.category_cap
    # Enough diverse candidates: the capped categories alone can fill the whole list.
    assume(np.minimum(np.bincount(category), cap).sum() >= min(count, n))
    result = rerank(cands, [], config)
    assert result.item_idx.size == min(count, n)
    assert np.bincount(category[result.item_idx - 100]).max() <= cap


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 40),
    count=st.integers(1, 12),
    max_per_brand=st.integers(1, 4),
    exploration=st.sampled_from([0.0, 0.3]),
)
def test_property_brand_cap_holds_with_enough_diversity(
    data: st.DataObject, n: int, count: int, max_per_brand: int, exploration: float
) -> None:
    brand = np.array(data.draw(st.lists(st.integers(-1, 4), min_size=n, max_size=n)))
    cands = make_candidates(
        n, score=np.array(data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n))), brand=brand
    )
    config = RerankConfig(
        count=count,
        max_category_share=1.0,
        max_per_brand=max_per_brand,
        exploration_share=exploration,
        seed=2,
    )
    branded = brand[brand >= 0]
    assume(np.minimum(np.bincount(branded, minlength=1), max_per_brand).sum() + (brand < 0).sum() >= min(count, n))
    result = rerank(cands, [], config)
    assert result.item_idx.size == min(count, n)
    out_brands = brand[result.item_idx - 100]
    out_branded = out_brands[out_brands >= 0]
    if out_branded.size:
        assert np.bincount(out_branded).max() <= max_per_brand
