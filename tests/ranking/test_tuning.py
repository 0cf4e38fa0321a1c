"""ranking.tuning on generated logs (pure numpy, no database): the validation protocol fits the data (a log spread
over years validates on each user's own tail, a dense recent one on the window), the search records its choices
and stays within its budget, deterministically, and the never-worse rule picks a single source that beats the
pipeline."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ranking import confidence, evaluation, metrics, sources, tuning
from ranking.dataset import InteractionLog, ItemTable, log_from_arrays
from ranking.services import version_build
from ranking.training import StageTimer, TrainParams, content_vectors

DAY = 86_400.0
YEAR = 365.25 * DAY
START = 1_600_000_000.0
SMALL = TrainParams(
    als_factors=8, als_iterations=8, neighbours_k=10, fbt_k=5, content_dims=8, content_k=5, tune_budget_seconds=0,
)  # fmt: skip


def _items(n_clusters: int, per_cluster: int) -> ItemTable:
    n = n_clusters * per_cluster
    return ItemTable(
        item_ids=np.arange(1, n + 1, dtype=np.int64),
        category=np.repeat(np.arange(n_clusters, dtype=np.int32), per_cluster),
        texts=[f"cluster {i // per_cluster} item {i}" for i in range(n)],
    )


def cluster_log(
    *,
    n_users: int,
    n_clusters: int = 4,
    per_cluster: int = 15,
    events_per_user: int = 10,
    user_start: np.ndarray,
    user_span_days: float,
    seed: int = 0,
) -> tuple[InteractionLog, ItemTable]:
    """Users buy items of one cluster; user u's purchases lie in [user_start[u], + user_span_days]."""
    rng = np.random.default_rng(seed)
    items = _items(n_clusters, per_cluster)
    customer, item, ts = [], [], []
    for u in range(n_users):
        cluster = u % n_clusters
        chosen = rng.choice(per_cluster, events_per_user, replace=False) + cluster * per_cluster + 1
        customer += [u + 1] * events_per_user
        item += chosen.tolist()
        ts += (user_start[u] + np.sort(rng.uniform(0, user_span_days, events_per_user)) * DAY).tolist()
    log = log_from_arrays(
        customer=customer, item=item, type_=np.full(len(item), sources.PURCHASE), value=np.zeros(len(item)),
        ts=ts, session=None, items=items,
    )  # fmt: skip
    return log, items


def spread_over_years(n_users: int = 200, seed: int = 0) -> tuple[InteractionLog, ItemTable]:
    """Every user active for two months, at a different time over ten years."""
    starts = START + np.random.default_rng(seed + 1).uniform(0, 10 * YEAR, n_users)
    return cluster_log(n_users=n_users, user_start=starts, user_span_days=60, seed=seed)


def dense_recent(n_users: int = 200, seed: int = 0) -> tuple[InteractionLog, ItemTable]:
    """Every user active over the same 120 days."""
    return cluster_log(n_users=n_users, user_start=np.full(n_users, START), user_span_days=120, seed=seed)


def test_user_tail_split_holds_out_each_users_latest_events() -> None:
    log, _ = spread_over_years(n_users=40)
    split = evaluation.split_user_tail(log, fraction=0.2, min_history=3)
    assert split.protocol == "user_tail"
    assert split.n_test_users == 40  # ten distinct items each: two held out, both new to the user
    assert len(split.train) == 40 * 8
    for row in range(split.n_test_users):
        u = split.user_index[row]
        train_ts = split.train.ts[split.train.user == u]
        held = log.ts[(log.user == u)]
        # The held-out events are the user's two latest.
        assert np.sort(held)[-3] == train_ts.max()
        assert split.relevant[row].size == 2


def test_user_tail_split_can_also_hold_out_random_items_of_the_rest() -> None:
    log, _ = spread_over_years(n_users=40)
    split = evaluation.split_user_tail(log, fraction=0.2, min_history=3, random_fraction=0.25, seed=5)
    assert split.n_test_users == 40
    # Two latest items plus round(0.25 * 8) = 2 of the other eight at random, all four new to the user.
    assert len(split.train) == 40 * 6
    earlier_held = 0
    for row in range(split.n_test_users):
        u = split.user_index[row]
        user_ts = np.sort(log.ts[log.user == u])
        train_ts = split.train.ts[split.train.user == u]
        assert split.relevant[row].size == 4
        assert set(user_ts[-2:]).isdisjoint(train_ts)  # the tail is held out
        earlier_held += int(np.isin(user_ts[:-2], train_ts, invert=True).sum())
        # The two questions split the held-out items: the two latest answer "next", the two drawn "other".
        latest = log.item[(log.user == u) & np.isin(log.ts, user_ts[-2:])]
        nxt = split.questions[evaluation.TAIL_QUESTION][row]
        other = split.questions[evaluation.RANDOM_QUESTION][row]
        assert sorted(nxt.tolist()) == sorted(latest.tolist())
        assert sorted([*nxt.tolist(), *other.tolist()]) == split.relevant[row].tolist()
    assert earlier_held == 40 * 2
    sampled = split.sample_users(10, seed=1)
    assert [len(part) for part in sampled.questions.values()] == [10, 10]
    assert all(
        sorted([*a.tolist(), *b.tolist()]) == r.tolist()
        for a, b, r in zip(*sampled.questions.values(), sampled.relevant, strict=True)
    )
    assert evaluation.split_user_tail(log, fraction=0.2, min_history=3).questions == {}
    again = evaluation.split_user_tail(log, fraction=0.2, min_history=3, random_fraction=0.25, seed=5)
    other = evaluation.split_user_tail(log, fraction=0.2, min_history=3, random_fraction=0.25, seed=6)
    assert [r.tolist() for r in again.relevant] == [r.tolist() for r in split.relevant]
    assert [r.tolist() for r in other.relevant] != [r.tolist() for r in split.relevant]


def test_two_questions_weigh_the_same_in_proportion() -> None:
    # The geometric mean: a 10% gain on one question does not pay for a 20% loss on the other, whatever the scales.
    assert metrics.balanced({"next": 0.1, "other": 0.4}) == pytest.approx(0.2)
    recency = metrics.balanced({"next": 0.11, "other": 0.32})
    whole_history = metrics.balanced({"next": 0.10, "other": 0.40})
    assert whole_history > recency
    # Pooled, the larger question's items would decide: here "next" (1,000 users) outweighs "other".
    nan = np.nan
    per_question = {
        "pipeline": {"next": np.array([0.2, 0.2, nan]), "other": np.array([0.5, nan, 0.5])},
        "ease": {"next": np.array([0.3, 0.1, nan]), "other": np.array([0.3, nan, 0.7])},
    }
    per_user = metrics.balanced_per_user(per_question)
    # Scales: "next" 0.2, "other" 0.5 (over both modes); unit sqrt(0.2 * 0.5).
    unit = np.sqrt(0.1)
    assert per_user["pipeline"] == pytest.approx([unit * (1.0 + 1.0) / 2, unit * 1.0, unit * 1.0])
    assert per_user["ease"] == pytest.approx([unit * (1.5 + 0.6) / 2, unit * 0.5, unit * 1.4])
    # Paired: users who answer no question stay out (NaN), for every mode alike.
    none = metrics.balanced_per_user({"a": {"next": np.array([nan, 0.5])}, "b": {"next": np.array([nan, 0.1])}})
    assert np.isnan(none["a"][0])
    assert np.isnan(none["b"][0])


def test_each_question_is_scored_on_its_own_items() -> None:
    from ranking.pipeline.offline import served_ndcg_per_question

    log, _ = spread_over_years(n_users=40)
    split = evaluation.split_user_tail(log, fraction=0.2, min_history=3, random_fraction=0.25, seed=5)
    nxt = split.questions[evaluation.TAIL_QUESTION]
    lists = np.full((split.n_test_users, 10), -1, np.int64)
    for row, items in enumerate(nxt):
        lists[row, : items.size] = items
    scores = served_ndcg_per_question(split, lists, k=10)
    assert scores[evaluation.TAIL_QUESTION].tolist() == [1.0] * split.n_test_users
    assert scores[evaluation.RANDOM_QUESTION].tolist() == [0.0] * split.n_test_users
    rows = [3, 7]
    subset = served_ndcg_per_question(split, lists[rows], k=10, rows=rows)
    assert subset[evaluation.TAIL_QUESTION].tolist() == [1.0, 1.0]
    one_question = evaluation.split_user_tail(log, fraction=0.2, min_history=3)
    assert served_ndcg_per_question(one_question, lists[: one_question.n_test_users], k=10) == {}


def test_protocol_choice_fits_the_data() -> None:
    spread, _ = spread_over_years()
    plan, split = tuning.validation_plan(spread, TrainParams())
    assert plan.protocol == tuning.USER_TAIL
    assert "fewer than" in plan.reason
    assert "last 20%" in plan.reason
    assert "with 10% of their other items at random" in plan.reason
    assert split is not None
    assert split.info["random_fraction"] == 0.1
    assert split is not None
    assert split.protocol == "user_tail"
    assert split.n_test_users == plan.eligible_users == 200

    dense, _ = dense_recent()
    plan, split = tuning.validation_plan(dense, TrainParams())
    assert plan.protocol == tuning.WINDOW
    assert split is not None
    assert split.protocol == "temporal"
    assert plan.window_users >= max(50, 0.25 * plan.eligible_users)
    assert "at least" in plan.reason


def test_serve_choice_never_worse_than_its_best_part() -> None:
    rng = np.random.default_rng(1)
    n = 800
    ease = rng.uniform(0.0, 0.6, n)
    # The pipeline clearly below the best single source: the source serves.
    choice, reason, figures = tuning.serve_choice(
        {"pipeline": ease - 0.05, "ease": ease, "als": ease - 0.03}, ranker_ships=False, k=10
    )
    assert choice == "source:ease"
    assert "not better with confidence" in reason
    assert figures["against"] == "ease"
    assert figures["lower_bound"] < 0
    # Clearly above it: the pipeline serves.
    choice, reason, figures = tuning.serve_choice({"pipeline": ease + 0.05, "ease": ease}, ranker_ships=False, k=10)
    assert choice == "pipeline"
    assert figures["confident"]
    assert figures["lower_bound"] > 0
    # A shipped ranker has already been judged: the pipeline.
    assert tuning.serve_choice({"pipeline": ease - 0.05, "ease": ease}, ranker_ships=True, k=10)[0] == "pipeline"


def test_serve_choice_between_tied_sources_serves_the_blend() -> None:
    """A tiny, noisy advantage of the pipeline leaves the best single source serving only when validation can tell
    it is the best source; between sources it cannot tell apart, the blend of them serves."""
    rng = np.random.default_rng(11)
    n = 900
    ease = np.where(rng.random(n) < 0.6, rng.uniform(0.1, 1.0, n), 0.0)
    noise = rng.normal(0.0, 0.2, n)
    pipeline = ease + (noise - noise.mean()) + 0.003  # above ease on average, within the noise
    other = rng.normal(0.0, 0.2, n)
    tied = ease + (other - other.mean()) - 0.002  # the runner-up: 0.002 below ease, within the noise
    choice, reason, figures = tuning.serve_choice(
        {"pipeline": pipeline, "ease": ease, "als": tied}, ranker_ships=False, k=10
    )
    assert choice == "pipeline"
    assert "tied sources" in reason
    assert figures["best_source_vs_runner_up"]["runner_up"] == "als"
    assert not figures["best_source_vs_runner_up"]["confident"]
    # A runner-up clearly below the best source: that source serves, the simpler choice.
    clearly_below = np.clip(ease - 0.1, 0.0, None)
    choice, reason, figures = tuning.serve_choice(
        {"pipeline": pipeline, "ease": ease, "als": clearly_below}, ranker_ships=False, k=10
    )
    assert choice == "source:ease"
    assert figures["best_source_vs_runner_up"]["confident"]
    # The pipeline below the best source, tied sources or not: never worse than its best part.
    assert tuning.serve_choice({"pipeline": ease - 0.01, "ease": ease, "als": tied}, ranker_ships=False, k=10)[0] == (
        "source:ease"
    )


def test_confidence_rule_a_tiny_noisy_advantage_does_not_ship_a_clear_one_does() -> None:
    rng = np.random.default_rng(7)
    n = 240  # about the ranker's unseen validation users on MovieLens 100K
    base = np.where(rng.random(n) < 0.5, rng.uniform(0.1, 1.0, n), 0.0)
    noise = rng.normal(0.0, 0.25, n)
    tiny = base + (noise - noise.mean()) + 0.015  # exactly +0.015 on average, inside the per-user noise
    verdict = confidence.paired_bootstrap(tiny, base, seed=3)
    assert verdict.difference > 0
    assert not verdict.confident
    assert verdict.lower < 0
    clear = np.clip(base + 0.1 + rng.normal(0.0, 0.05, n), 0.0, 1.0)
    verdict = confidence.paired_bootstrap(clear, base, seed=3)
    assert verdict.confident
    assert verdict.lower > 0.05
    # Users without a relevant item (NaN) are left out; too few users are never conclusive.
    with_nan = np.where(np.arange(n) % 2 == 0, np.nan, clear)
    assert confidence.paired_bootstrap(with_nan, base).users == n // 2
    assert not confidence.paired_bootstrap(clear[:10], base[:10]).confident
    # In the serve choice: the same tiny advantage of the pipeline leaves the simpler single source serving.
    choice, _, _ = tuning.serve_choice({"pipeline": tiny, "ease": base}, ranker_ships=False, k=10)
    assert choice == "source:ease"
    assert tuning.serve_choice({"pipeline": clear, "ease": base}, ranker_ships=False, k=10)[0] == "pipeline"


def test_tuning_records_its_choices_within_budget_and_is_deterministic() -> None:
    log, items = spread_over_years(n_users=120)
    plan, split = tuning.validation_plan(log, SMALL)
    assert split is not None
    vectors = content_vectors(items, SMALL)
    budget = 3.0
    started = time.perf_counter()
    result = tuning.tune(split, items, SMALL, vectors, budget_seconds=budget)
    elapsed = time.perf_counter() - started
    slowest = max(t.seconds for t in result.trials)
    # The search stops before a trial would cross the budget (estimated from the slowest trial so far).
    assert elapsed <= budget + 2 * slowest + 0.5
    assert len(result.trials) >= 2
    # The defaults and "no decay" are the first two candidates.
    assert result.trials[0].params["half_life_days"] == SMALL.half_life_days
    assert result.trials[1].params["half_life_days"] is None
    assert result.trials[1].params["history_half_life_days"] is None
    best = result.best
    assert best is not None
    assert best.number == result.chosen_trial
    # The chosen trial is the best one, or one the record says tied with it (tuning.hedged_choice's tests).
    assert best.served_ndcg == max(t.served_ndcg for t in result.trials) or result.hedges
    for name, value in best.params.items():
        assert result.chosen[name] == value == getattr(result.params, name)
    recorded = result.to_dict()
    assert recorded["n_trials"] == len(result.trials)
    assert recorded["best_trial"] == best.number
    assert {"trial", "params", "ndcg", "served_ndcg"} <= set(recorded["trials"][0])

    # Same data, same seed, same number of trials: the same search.
    first = tuning.tune(split, items, SMALL, vectors, budget_seconds=600, max_trials=6)
    second = tuning.tune(split, items, SMALL, vectors, budget_seconds=600, max_trials=6)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.ndcg for t in first.trials] == pytest.approx([t.ndcg for t in second.trials], abs=1e-3)
    assert first.chosen == second.chosen
    # Then the retrieval knobs: the defaults, the defaults with EASE over the whole history, every anchor of the
    # history alike, every anchor with recency on a floor.
    retrieval = [t for t in first.trials if t.phase == "retrieval"]
    defaults = {"anchors": SMALL.anchors, "anchor_decay": SMALL.anchor_decay, "anchor_floor": 0.0}
    assert retrieval[0].params == {**defaults, "ease_whole_history": False}
    assert retrieval[1].params == {**defaults, "ease_whole_history": True}
    whole = {"anchors": 200, "ease_whole_history": False}
    assert retrieval[2].params == {**whole, "anchor_decay": 1.0, "anchor_floor": 1.0}
    assert retrieval[3].params == {**whole, "anchor_decay": 0.85, "anchor_floor": 0.3}
    assert {"anchors", "anchor_decay", "anchor_floor", "half_life_days", "ease_lambda", "ease_user_exponent"} <= set(
        first.chosen
    )
    # Then the blend's weights: the defaults, then the personal sources without trending, popular and new arrivals.
    blend = [t for t in first.trials if t.phase == "blend"]
    assert blend[0].params == dict.fromkeys(tuning.BLEND_SPACE, 1.0)
    assert blend[1].params == {**dict.fromkeys(tuning.BLEND_SPACE, 1.0), "blend_global": 0.0}
    assert set(tuning.BLEND_SPACE) <= set(first.chosen)


def _trial(number: int, per_question: dict[str, np.ndarray]) -> tuning.Trial:
    """A pipeline-only trial with these per-user NDCG@10 per question, its figures derived as tuning derives them."""
    means = {question: metrics.nan_mean(values) for question, values in per_question.items()}
    return tuning.Trial(
        number, "retrieval", {"n": number}, metrics.balanced(means), {}, 0.0,
        by_question={tuning.PIPELINE: means}, per_question={tuning.PIPELINE: per_question},
    )  # fmt: skip


def _noisy(mean: float, users: int, rng: np.random.Generator) -> np.ndarray:
    """Per-user figures with exactly this mean, spread from 0 to twice it, in an order of their own."""
    return rng.permutation(np.linspace(0.0, 2 * mean, users))


def test_between_tied_trials_the_one_nearest_the_best_on_both_questions_is_chosen() -> None:
    rng = np.random.default_rng(3)
    users = 300
    # A: the highest balanced figure, by a hair, all on "next"; C: all on "other"; B: near the best on both.
    shapes = {0: (0.200, 0.100), 1: (0.170, 0.1175), 2: (0.120, 0.160)}
    trials = [
        _trial(n, {"next": _noisy(a, users, rng), "other": _noisy(b, users, rng)}) for n, (a, b) in shapes.items()
    ]
    a, b, c = trials
    assert a.served_ndcg == max(t.served_ndcg for t in trials)
    winner, why = tuning.hedged_choice(trials)
    assert winner is b
    assert why.startswith(f"trial {b.number} over trial {a.number}: tied")
    assert "next 0.1700 vs 0.2000" in why
    assert "other 0.1175 vs 0.1000" in why

    # One question asked (a window split): the best trial, whatever the others.
    plain = [tuning.Trial(n, "retrieval", {}, t.ndcg, {}, 0.0) for n, t in enumerate(trials)]
    assert tuning.hedged_choice(plain) == (plain[0], "")


def test_a_trial_worse_with_confidence_is_not_a_tie() -> None:
    users = 300
    flat = np.ones(users)
    # The same shapes without noise: B and C are worse than A for every user, so the best trial is chosen.
    a = _trial(0, {"next": 0.200 * flat, "other": 0.100 * flat})
    b = _trial(1, {"next": 0.170 * flat, "other": 0.1175 * flat})
    c = _trial(2, {"next": 0.120 * flat, "other": 0.160 * flat})
    assert tuning.hedged_choice([a, b, c]) == (a, "")


def test_version_build_serves_the_single_source_that_beats_the_pipeline() -> None:
    """One cluster per category: the 30% cap forces every list out of the user's cluster, so a source ranks the
    capped slots well or badly; the blend pulls in popular and trending items of other clusters as well. Whatever
    wins, the recorded choice must be the better of the two figures it records."""
    log, items = spread_over_years(n_users=160)
    # Without a ranker (one that ships serves the pipeline, whatever the blend's figures): the blend or a source.
    build = version_build(log, items, SMALL.replace(ranker_ship="never"), StageTimer(enabled=False))
    assert build.validation is not None
    serve = build.validation["serve"]
    pipeline, singles = serve["pipeline_ndcg"], serve["single_sources_ndcg"]
    best = max(singles, key=singles.__getitem__)
    assert build.trained.params.serve == serve["choice"] == build.serve
    # The pipeline when it beats the best single source with confidence; that source when the pipeline is below
    # it, or when validation can tell it is the best single source; between tied sources, the pipeline.
    comparison = serve["confidence"]
    assert comparison["against"] == best
    if comparison["confident"]:
        assert serve["choice"] == "pipeline"
        assert pipeline > singles[best]
    elif comparison["difference"] < 0:
        assert serve["choice"] == f"source:{best}"
    else:
        separation = comparison["best_source_vs_runner_up"]
        assert singles[separation["runner_up"]] <= singles[best]
        assert serve["choice"] == (f"source:{best}" if separation["confident"] else "pipeline")
    assert build.validation["protocol"]["protocol"] == tuning.USER_TAIL


def test_a_source_mode_with_too_few_candidates_leaves_the_request_to_the_pipeline() -> None:
    """A version that serves one source still answers a cold customer (no history, no neighbours) in full."""
    from ranking.pipeline import TrainedModel, offline_inputs
    from ranking.pipeline.stages import retrieve, source_hits
    from ranking.pipeline.state import History, RequestState
    from ranking.training import train_sources

    log, items = dense_recent(n_users=60)
    split = evaluation.split_temporal(log, holdout_days=30)
    model = TrainedModel(train_sources(split.train, items, SMALL, reference_ts=split.reference_ts))
    inputs = offline_inputs(split, items, model)
    cold = RequestState(surface="home", count=10, now=split.reference_ts, mode="source:ease", history=History.empty())
    retrieve(cold, model, inputs.lists, np.empty(0, np.int64))
    assert cold.mode == "pipeline"
    assert cold.candidates is not None
    assert len(cold.candidates) >= 10
    pks = model.item_ids[split.train.item[split.train.user == 0]]
    warm = RequestState(
        surface="home", count=5, now=split.reference_ts, mode="source:ease",
        history=History(pks.astype(np.int64), np.full(pks.size, sources.PURCHASE, np.int64), np.zeros(pks.size)),
    )  # fmt: skip
    retrieve(warm, model, inputs.lists, np.empty(0, np.int64))
    assert warm.mode == "source:ease"
    assert warm.hits is not None
    assert set(warm.hits) == {"ease"}
    # Only that source is computed, and it is the same as among all of them.
    every = source_hits(warm, model, inputs.lists)
    assert {"ease", "item_knn", "popular", "new"} <= set(every)
    for name in ("ease", "item_knn", "popular", "ann"):
        alone = source_hits(warm, model, inputs.lists, only=name)
        assert set(alone) == ({name} if name in every else set())
        if name in every:
            assert alone[name].item_idx.tolist() == every[name].item_idx.tolist()
            assert alone[name].score.tolist() == every[name].score.tolist()


def test_a_ranker_below_the_blend_does_not_ship() -> None:
    def validation(ranker: float, blend: float) -> dict:
        rows = {"pipeline (ranker, cap 30%)": {"ndcg@10": ranker}, "pipeline (blend, cap 30%)": {"ndcg@10": blend}}
        return {"segments": {"main": {"sources": {}}, "ranker_unseen": {"sources": rows}}}

    beats, why = tuning.ranker_beats_blend(validation(0.20, 0.21), k=10)
    assert not beats
    assert "0.2000 vs blend 0.2100" in why
    assert tuning.ranker_beats_blend(validation(0.25, 0.21), k=10)[0]


def test_ease_over_the_whole_history_scores_every_history_item_alike() -> None:
    """``ease_whole_history``: EASE's candidates are its classical scores over the whole history (X_u B, every item
    weighted 1), whatever the anchors of the other neighbour sources, which keep theirs; the version's params carry
    the choice to serving."""
    from ranking import retrieval
    from ranking.pipeline import TrainedModel, offline_inputs
    from ranking.pipeline.stages import source_hits
    from ranking.pipeline.state import QUOTAS, History, RequestState, RetrievalParams
    from ranking.training import train_sources

    log, items = dense_recent(n_users=60)
    split = evaluation.split_temporal(log, holdout_days=30)
    model = TrainedModel(train_sources(split.train, items, SMALL, reference_ts=split.reference_ts))
    assert model.has("ease_b")
    inputs = offline_inputs(split, items, model)
    pks = model.item_ids[np.unique(split.train.item[split.train.user == 0])][:12]
    types = np.full(pks.size, sources.PURCHASE, np.int64)
    history = History(pks.astype(np.int64), types, -np.arange(pks.size, dtype=float))

    def hits(params: RetrievalParams) -> dict[str, retrieval.SourceHits]:
        state = RequestState(surface="home", count=10, now=split.reference_ts, history=history, retrieval=params)
        return source_hits(state, model, inputs.lists)

    recent = hits(RetrievalParams(anchors=1, anchor_decay=1.0))
    whole = hits(RetrievalParams(anchors=1, anchor_decay=1.0, ease_whole_history=True))
    every = model.item_index(history.anchors(200)[0])
    expected = retrieval.dense_neighbours(every, np.ones(every.size, np.float32), model.array("ease_b"), QUOTAS["ease"])
    assert whole["ease"].item_idx.tolist() == model.item_ids[expected.item_idx].tolist()
    assert whole["ease"].item_idx.tolist() != recent["ease"].item_idx.tolist()
    assert whole["item_knn"].item_idx.tolist() == recent["item_knn"].item_idx.tolist()  # still the one anchor

    assert RetrievalParams.of({"ease_whole_history": True}).ease_whole_history
    assert not RetrievalParams.of({"ease_whole_history": "yes"}).ease_whole_history  # only a JSON true
    assert not RetrievalParams.of({}).ease_whole_history  # versions trained before the knob
    assert TrainParams().with_overrides(["ease_whole_history=true"]).ease_whole_history
    with pytest.raises(ValueError, match="ease_whole_history takes true or false"):
        TrainParams().with_overrides(["ease_whole_history=1"])
