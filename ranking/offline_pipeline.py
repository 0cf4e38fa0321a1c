"""The serving pipeline offline: retrieval from every source, the ranker (or the blend) and the diversity
re-ranker, as an evaluation recommender; and the LambdaMART training data it is learnt from. Pure: no ORM.

Serving (ranking/serving.py) and this module share the pieces that decide the order: ``retrieval.neighbours`` and
``retrieval.merge``, ``ranker.candidate_context``/``build_features``/``blend_scores`` and ``rerank.rerank``. Offline
a customer is what serving would see at the split's reference time (``now``): their latest ``HISTORY_LIMIT``
training events newest first, category affinities decayed to ``now``, a user vector folded in from that history;
the item side is the version's arrays plus price, listing time and the click-through rate of the 24 hours before
``now``. Items listed after ``now`` did not exist yet and are never candidates. Retrieval follows serving's rules
(the same anchors, quotas and neighbour tables, new arrivals); where an input does not exist offline the
difference is named in docs/models.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from ranking import ann, retrieval, sources
from ranking import rerank as rr
from ranking.dataset import ItemTable, UserEvents, user_events
from ranking.evaluation import EvalUsers, SourceFn, Split, eval_users, source_recommenders
from ranking.ranker import (
    RankerParams,
    blend_scores,
    build_features,
    candidate_context,
    category_affinity,
    click_through_rate,
    score,
    train_ranker,
)
from ranking.training import TrainedSources

IntArray = npt.NDArray[np.int64]

# Candidates each source contributes before the merge (serving uses the same table).
QUOTAS = {
    "ann": 100, "item_knn": 100, "ease": 100, "content": 40, "fbt": 30, "trending": 40, "popular": 40, "new": 20,
}  # fmt: skip
HISTORY_LIMIT = 200  # a customer's latest events serving reads from the online state
ANCHORS = 20  # most recent distinct history items whose neighbours are retrieved
ANCHOR_DECAY = 0.85  # weight of the i-th most recent anchor: ANCHOR_DECAY ** i
CTR_HOURS = 24  # the online item features' click-through window
# Neighbour sources: serving name -> array prefix.
NEIGHBOUR_TABLES = (("item_knn", "knn"), ("ease", "ease"), ("content", "content"), ("fbt", "fbt"))
VIEW, CLICK = sources.VIEW, sources.CLICK


def fbt_quota(surface: str) -> int:
    """Co-purchase fills half its quota except where a basket is in view (the offline lists are "home")."""
    return QUOTAS["fbt"] if surface in ("cart", "item", "checkout") else QUOTAS["fbt"] // 2


def anchor_weights(n: int) -> npt.NDArray[np.float32]:
    return (ANCHOR_DECAY ** np.arange(n, dtype=np.float32)).astype(np.float32)


def distinct_newest_first(items: IntArray) -> IntArray:
    """The distinct items of a newest-first event list, each at its latest position."""
    _, first = np.unique(items, return_index=True)
    return items[np.sort(first)]


@dataclass(frozen=True, eq=False)
class FeatureInputs:
    """What the features need besides the trained arrays, as of ``reference_ts``: per model item its price, age
    and click-through rate, which items exist, the newest arrivals; per training user the events, newest first."""

    reference_ts: float
    events: UserEvents
    price: npt.NDArray[np.float64]
    created_ts: npt.NDArray[np.float64]
    exists: npt.NDArray[np.bool_]
    ctr: npt.NDArray[np.float32]
    new_items: IntArray


def feature_inputs(split: Split, items: ItemTable) -> FeatureInputs:
    """The item and customer side of the features at the split's reference time, from its training log only."""
    log, now = split.train, split.reference_ts
    created = items.attribute("created_ts")
    # Unknown listing time (NaN): assume the item existed, as serving would list it.
    exists = ~(created > now)
    # The online counters are hourly buckets: the current hour and the 23 before it.
    first_hour = (int(now // 3600) - CTR_HOURS + 1) * 3600.0
    window = (log.ts >= first_hour) & (log.ts <= now)
    views = np.bincount(log.item[window & (log.type == VIEW)], minlength=log.n_items)
    clicks = np.bincount(log.item[window & (log.type == CLICK)], minlength=log.n_items)
    listed = np.flatnonzero(exists & ~np.isnan(created))
    newest = listed[np.argsort(-created[listed], kind="stable")[: QUOTAS["new"]]]
    return FeatureInputs(
        reference_ts=now, events=user_events(log), price=items.attribute("price"), created_ts=created,
        exists=exists, ctr=click_through_rate(views, clicks), new_items=newest.astype(np.int64),
    )  # fmt: skip


@dataclass(frozen=True, eq=False)
class UserCandidates:
    """Every evaluated user's merged candidates and features."""

    candidates: list[retrieval.CandidateSet]
    features: list[npt.NDArray[np.float32]]


def _user_vector(
    trained: TrainedSources, items: IntArray, types: npt.NDArray[np.int8], ts: npt.NDArray[np.float64], now: float
) -> npt.NDArray[np.float32] | None:
    """Fold-in of the latest history, exactly as ``ActiveModel.history_confidences`` + ``fold_in`` weigh it
    (event values are not in the online history, so they count as zero there and here)."""
    a, p = trained.arrays, trained.params
    if items.size == 0 or "als_item_factors" not in a:
        return None
    w = sources.event_weights(
        types, np.zeros(items.size), p.type_weights, rating_base=p.rating_base, rating_per_point=p.rating_per_point
    ) * sources.decay((now - ts) / sources.SECONDS_PER_DAY, p.history_half_life_days)
    distinct, conf = sources.history_confidences(
        items, w, aggregate=p.aggregate, alpha=p.als_alpha, scaling=p.als_scaling, eps=p.als_eps
    )
    if distinct.size == 0:
        return None
    return np.asarray(
        sources.fold_in(a["als_item_factors"], distinct, conf, p.als_regularization, a["als_yty"]), np.float32
    )


def _content_table(trained: TrainedSources) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]] | None:
    """Content neighbours as serving has them; validation skips them to save time, so compute them here when the
    catalog is small enough for exact search (else the profile recommender stands in, without anchors)."""
    a = trained.arrays
    if "content_idx" in a:
        return a["content_idx"], a["content_score"]
    vectors = a.get("content_vectors")
    if vectors is None or vectors.shape[0] >= trained.params.ann_flat_max_items:
        return None
    return ann.neighbours_table(vectors, trained.params.content_k, flat_max_items=trained.params.ann_flat_max_items)


def _global_hits(scores: npt.ArrayLike, quota: int, exists: npt.NDArray[np.bool_]) -> retrieval.SourceHits:
    return retrieval.top_k(np.asarray(scores, np.float32), quota, exclude=~exists)


def user_candidates(trained: TrainedSources, users: EvalUsers, inputs: FeatureInputs) -> UserCandidates:
    """Per user: serving's retrieval (in model index space), the merge, and the ranker features as of
    ``inputs.reference_ts``."""
    a = trained.arrays
    now = inputs.reference_ts
    popularity = np.asarray(a["popularity"], np.float32)
    trend = np.asarray(a["trending"], np.float32)
    category = np.asarray(a["item_category"], np.int64)
    item_factors = a.get("als_item_factors")
    exists = inputs.exists
    tables: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = {
        source: (a[f"{prefix}_idx"], a[f"{prefix}_score"])
        for source, prefix in NEIGHBOUR_TABLES
        if source != "content" and f"{prefix}_idx" in a
    }
    content = _content_table(trained)
    profile_lists: dict[str, IntArray] = {}
    if content is not None:
        tables["content"] = content
    elif "content" in (recs := source_recommenders(trained)):
        profile_lists["content"] = recs["content"](users, QUOTAS["content"])
    global_hits = {
        name: _global_hits(a[array], QUOTAS[name], exists)
        for name, array in (("trending", "trending"), ("popular", "popularity"))
        if array in a
    }
    new = inputs.new_items
    global_hits["new"] = retrieval.SourceHits(
        new, np.linspace(1.0, 0.5, new.size).astype(np.float32), np.full(new.size, -1)
    )
    cands, feats = [], []
    for row in range(len(users)):
        where = inputs.events.of(int(users.user_index[row]))
        ev_items, ev_types = inputs.events.item[where], inputs.events.type[where]
        ev_values, ev_ts = inputs.events.value[where], inputs.events.ts[where]
        latest = slice(0, HISTORY_LIMIT)
        history_ids = distinct_newest_first(ev_items[latest])
        anchors = history_ids[:ANCHORS]
        hits: dict[str, retrieval.SourceHits] = dict(global_hits)
        user_vector = _user_vector(trained, ev_items[latest], ev_types[latest], ev_ts[latest], now)
        if user_vector is not None:
            hits["ann"] = retrieval.top_k(item_factors @ user_vector, QUOTAS["ann"], exclude=~exists)
        for source, (idx, sim) in tables.items():
            quota = fbt_quota("home") if source == "fbt" else QUOTAS[source]
            hits[source] = retrieval.neighbours(anchors, anchor_weights(anchors.size), idx, sim, quota, ~exists)
        for source, table in profile_lists.items():
            found = table[row][table[row] >= 0]
            found = found[exists[found]]
            hits[source] = retrieval.SourceHits(
                found, (1.0 / (1.0 + np.arange(found.size))).astype(np.float32), np.full(found.size, -1)
            )
        merged = retrieval.merge(hits)
        idx = merged.item_idx
        context = candidate_context(
            model_idx=idx, popularity=popularity, trend=trend, category=category[idx], price=inputs.price[idx],
            created_ts=inputs.created_ts[idx], now=now, item_factors=item_factors, user_vector=user_vector,
            ctr=inputs.ctr[idx],
            category_affinity=category_affinity(category[ev_items], ev_types, ev_values, ev_ts, now),
            history_ids=history_ids, last_category=int(category[ev_items[0]]) if ev_items.size else -1,
        )  # fmt: skip
        cands.append(merged)
        feats.append(build_features(merged, context))
    return UserCandidates(cands, feats)


def _labels(candidates: retrieval.CandidateSet, relevant: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    return np.isin(candidates.item_idx, relevant).astype(np.float32)


@dataclass(frozen=True)
class RankerReport:
    trained: bool
    n_train_users: int
    n_valid_users: int
    best_iteration: int | None
    reason: str


def ranker_fit(
    split: Split,
    trained: TrainedSources,
    inputs: FeatureInputs,
    *,
    params: RankerParams | None = None,
    seed: int = 7,
) -> tuple[lgb.Booster | None, RankerReport, npt.NDArray[np.bool_]]:
    """LambdaMART on half of the split's test users (early stopping on a quarter); returns the booster, a report
    and the mask of users NOT used for fitting (the ones the pipeline may be evaluated on)."""
    users = eval_users(split, trained.params)
    rng = np.random.default_rng(seed)
    role = rng.random(len(users))  # < 0.5 fit, 0.5..0.75 early stopping, >= 0.75 held out for evaluation
    data = user_candidates(trained, users, inputs)
    groups: dict[str, list[int]] = {"fit": [], "stop": []}
    for row in range(len(users)):
        if role[row] >= 0.75:
            continue
        y = _labels(data.candidates[row], np.asarray(split.relevant[row]))
        if y.sum() == 0 or y.sum() == y.size:
            continue  # no signal for a ranking loss
        groups["fit" if role[row] < 0.5 else "stop"].append(row)
    held_out = role >= 0.75
    if len(groups["fit"]) < 20 or len(groups["stop"]) < 5:
        return None, RankerReport(False, len(groups["fit"]), len(groups["stop"]), None, "too few users"), held_out

    def stack(rows: list[int]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], IntArray]:
        X = np.vstack([data.features[r] for r in rows])
        y = np.concatenate([_labels(data.candidates[r], np.asarray(split.relevant[r])) for r in rows])
        return X, y, np.array([len(data.candidates[r]) for r in rows], np.int64)

    X, y, g = stack(groups["fit"])
    Xv, yv, gv = stack(groups["stop"])
    booster = train_ranker(X, y, g, Xv, yv, gv, params)
    report = RankerReport(True, len(groups["fit"]), len(groups["stop"]), booster.best_iteration, "trained")
    return booster, report, held_out


def pipeline_recommender(
    trained: TrainedSources,
    booster: lgb.Booster | None,
    inputs: FeatureInputs,
    *,
    diversity_cap: float | None,
    blend_weights: Mapping[str, float] | None = None,
) -> SourceFn:
    """The whole pipeline as an evaluation recommender: candidates, ranker (or blend), diversity re-ranking."""

    def recommend(users: EvalUsers, k: int) -> IntArray:
        data = user_candidates(trained, users, inputs)
        category = np.asarray(trained.arrays["item_category"], np.int64)
        out = np.full((len(users), k), -1, np.int64)
        for row in range(len(users)):
            cand = data.candidates[row]
            if len(cand) == 0:
                continue
            scores = score(booster, data.features[row]) if booster is not None else blend_scores(cand, blend_weights)
            seen = users.seen.indices[users.seen.indptr[row] : users.seen.indptr[row + 1]].astype(np.int64)
            result = rr.rerank(
                rr.Candidates(
                    item_idx=cand.item_idx, score=scores.astype(np.float64), category=category[cand.item_idx],
                    brand=np.full(len(cand), -1), available=np.ones(len(cand), bool), exposure=np.zeros(len(cand)),
                ),
                (),
                rr.RerankConfig(
                    count=k, exclude_idx=seen, max_category_share=diversity_cap or 1.0,
                    diversity="greedy" if diversity_cap else "off",
                ),
            )  # fmt: skip
            out[row, : result.item_idx.size] = result.item_idx
        return out

    return recommend


@dataclass(frozen=True, eq=False)
class PipelineEvaluation:
    """The evaluation on the users the ranker never saw, and the ranker worth shipping (or None)."""

    result: dict
    booster: lgb.Booster | None
    report: RankerReport
    ranker_beats_sources: bool


def evaluate_with_pipeline(
    split: Split, trained: TrainedSources, items: ItemTable, *, k: int, seed: int = 7, ship: str = "auto"
) -> PipelineEvaluation:
    """Fit the ranker on part of the split's users, then evaluate every source and the full pipeline (ranker or
    blend; with and without the 30% category cap) on the other users, side by side.

    With ``ship="auto"`` the ranker ships only if the capped pipeline's NDCG@k is at least the best single
    source's on those users; ``"always"`` and ``"never"`` override that (the figures are reported either way).
    """
    from ranking.evaluation import run_protocol

    inputs = feature_inputs(split, items)
    booster, report, held_out = ranker_fit(split, trained, inputs, seed=seed)
    rows = np.flatnonzero(held_out)
    held = Split(
        split.protocol, split.train, split.user_index[rows], split.user_ids[rows], [split.relevant[i] for i in rows],
        split.reference_ts, {**split.info, "ranker_held_out_users": int(rows.size)},
    )  # fmt: skip
    extra: dict[str, SourceFn] = {
        "pipeline (blend, cap 30%)": pipeline_recommender(trained, None, inputs, diversity_cap=0.3),
    }
    if booster is not None:
        extra["pipeline (ranker, cap 30%)"] = pipeline_recommender(trained, booster, inputs, diversity_cap=0.3)
        extra["pipeline (ranker, no cap)"] = pipeline_recommender(trained, booster, inputs, diversity_cap=None)
    result = run_protocol(held, trained, k=k, item_category=items.category, extra=extra)
    main = result["segments"]["main"]["sources"]
    key = f"ndcg@{k}"
    singles = {name: m[key] for name, m in main.items() if not name.startswith("pipeline")}
    best_name = max(singles, key=singles.__getitem__, default=None)
    best_source = singles[best_name] if best_name is not None else 0.0
    beats = booster is not None and main.get("pipeline (ranker, cap 30%)", {}).get(key, -1.0) >= best_source
    ships = booster is not None and (ship == "always" or (ship == "auto" and beats))
    result["ranker"] = {
        "trained": report.trained, "fit_users": report.n_train_users, "early_stopping_users": report.n_valid_users,
        "best_iteration": report.best_iteration, "held_out_users": int(rows.size),
        "best_single_source": best_name, "best_single_source_ndcg": best_source,
        "pipeline_ndcg": main.get("pipeline (ranker, cap 30%)", {}).get(key),
        "beats_sources": beats, "ship_rule": ship, "ships": ships,
    }  # fmt: skip
    return PipelineEvaluation(result, booster if ships else None, report, beats)


def booster_to_array(booster: lgb.Booster) -> npt.NDArray[np.uint8]:
    """The ranker as a byte array, so it travels with the version's other arrays and checksums."""
    return np.frombuffer(booster.model_to_string().encode(), dtype=np.uint8).copy()


def booster_from_array(array: npt.NDArray[np.uint8]) -> lgb.Booster:
    return lgb.Booster(model_str=bytes(np.asarray(array)).decode())
