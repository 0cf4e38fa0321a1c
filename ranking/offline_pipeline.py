"""The serving pipeline offline: retrieval from every source, the ranker (or the blend) and the diversity
re-ranker, as an evaluation recommender; and the LambdaMART training data it is learnt from. Pure: no ORM.

Serving (ranking/serving.py) and this module share the pieces that decide the order: ``retrieval.merge``,
``ranker.build_features``/``blend_scores`` and ``rerank.rerank``. Offline the sources are the evaluation's source
recommenders (each a top-N list per user, in model index space), so a candidate's per-source rank is what it is
online; the per-source scores offline are reciprocal ranks (the recommenders return lists, not scores).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from ranking import rerank as rr
from ranking import retrieval
from ranking.evaluation import EvalUsers, SourceFn, Split, eval_users, source_recommenders
from ranking.ranker import FeatureContext, RankerParams, blend_scores, build_features, score, train_ranker
from ranking.training import TrainedSources

IntArray = npt.NDArray[np.int64]

# Evaluation source name -> serving source name.
SOURCE_NAMES = {
    "als": "ann", "item_knn": "item_knn", "ease": "ease", "content": "content", "fbt": "fbt",
    "trending": "trending", "popularity": "popular",
}  # fmt: skip
QUOTAS = {"ann": 100, "item_knn": 100, "ease": 100, "content": 40, "fbt": 30, "trending": 40, "popular": 40}


@dataclass(frozen=True, eq=False)
class UserCandidates:
    """Every evaluated user's merged candidates and features."""

    candidates: list[retrieval.CandidateSet]
    features: list[npt.NDArray[np.float32]]


def _source_lists(trained: TrainedSources, users: EvalUsers) -> dict[str, IntArray]:
    recs = source_recommenders(trained)
    return {
        SOURCE_NAMES[name]: fn(users, QUOTAS[SOURCE_NAMES[name]]) for name, fn in recs.items() if name in SOURCE_NAMES
    }


def user_candidates(trained: TrainedSources, users: EvalUsers, reference_ts: float) -> UserCandidates:
    """Per user: merge the sources' lists (in model index space) and build the ranker features."""
    lists = _source_lists(trained, users)
    a = trained.arrays
    popularity = np.asarray(a["popularity"], np.float32)
    trend = np.asarray(a["trending"], np.float32)
    category = np.asarray(a["item_category"], np.int64)
    history = users.history
    cands, feats = [], []
    for row in range(len(users)):
        hits = {}
        for name, table in lists.items():
            items = table[row][table[row] >= 0]
            if items.size:
                hits[name] = retrieval.SourceHits(
                    items, (1.0 / (1.0 + np.arange(items.size))).astype(np.float32), np.full(items.size, -1)
                )
        merged = retrieval.merge(hits)
        idx = merged.item_idx
        start, stop = history.indptr[row], history.indptr[row + 1]
        hist_items = history.indices[start:stop].astype(np.int64)
        hist_weight = history.data[start:stop]
        affinity: dict[int, float] = {}
        if hist_items.size:
            for c, w in zip(category[hist_items].tolist(), hist_weight.tolist(), strict=True):
                affinity[c] = affinity.get(c, 0.0) + float(w)
            latest = hist_items[np.argsort(-hist_weight)]
            last_category = int(category[latest[0]])
        else:
            latest, last_category = np.empty(0, np.int64), -1
        context = FeatureContext(
            category=category[idx], popularity=popularity[idx], trend=trend[idx],
            age_days=np.full(idx.size, np.nan, np.float32), price=np.full(idx.size, np.nan, np.float32),
            category_affinity=affinity, history_ids=latest, last_category=last_category,
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
    split: Split, trained: TrainedSources, *, params: RankerParams | None = None, seed: int = 7
) -> tuple[lgb.Booster | None, RankerReport, npt.NDArray[np.bool_]]:
    """LambdaMART on half of the split's test users (early stopping on a quarter); returns the booster, a report
    and the mask of users NOT used for fitting (the ones the pipeline may be evaluated on)."""
    users = eval_users(split, trained.params)
    rng = np.random.default_rng(seed)
    role = rng.random(len(users))  # < 0.5 fit, 0.5..0.75 early stopping, >= 0.75 held out for evaluation
    data = user_candidates(trained, users, split.reference_ts)
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
    *,
    reference_ts: float,
    diversity_cap: float | None,
    blend_weights: Mapping[str, float] | None = None,
) -> SourceFn:
    """The whole pipeline as an evaluation recommender: candidates, ranker (or blend), diversity re-ranking."""

    def recommend(users: EvalUsers, k: int) -> IntArray:
        data = user_candidates(trained, users, reference_ts)
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
    split: Split, trained: TrainedSources, *, k: int, item_category: npt.ArrayLike, seed: int = 7
) -> PipelineEvaluation:
    """Fit the ranker on part of the split's users, then evaluate every source and the full pipeline (ranker or
    blend; with and without the 30% category cap) on the other users, side by side.

    The ranker ships only if the capped pipeline's NDCG@k is at least the best single source's on those users.
    """
    from ranking.evaluation import run_protocol

    booster, report, held_out = ranker_fit(split, trained, seed=seed)
    rows = np.flatnonzero(held_out)
    held = Split(
        split.protocol, split.train, split.user_index[rows], split.user_ids[rows], [split.relevant[i] for i in rows],
        split.reference_ts, {**split.info, "ranker_held_out_users": int(rows.size)},
    )  # fmt: skip
    extra: dict[str, SourceFn] = {
        "pipeline (blend, cap 30%)": pipeline_recommender(
            trained, None, reference_ts=split.reference_ts, diversity_cap=0.3
        ),
    }
    if booster is not None:
        extra["pipeline (ranker, cap 30%)"] = pipeline_recommender(
            trained, booster, reference_ts=split.reference_ts, diversity_cap=0.3
        )
        extra["pipeline (ranker, no cap)"] = pipeline_recommender(
            trained, booster, reference_ts=split.reference_ts, diversity_cap=None
        )
    result = run_protocol(held, trained, k=k, item_category=item_category, extra=extra)
    main = result["segments"]["main"]["sources"]
    key = f"ndcg@{k}"
    best_source = max((m[key] for name, m in main.items() if not name.startswith("pipeline")), default=0.0)
    ships = booster is not None and main.get("pipeline (ranker, cap 30%)", {}).get(key, -1.0) >= best_source
    result["ranker"] = {
        "trained": report.trained, "fit_users": report.n_train_users, "early_stopping_users": report.n_valid_users,
        "best_iteration": report.best_iteration, "held_out_users": int(rows.size),
        "best_single_source_ndcg": best_source,
        "pipeline_ndcg": main.get("pipeline (ranker, cap 30%)", {}).get(key),
        "ships": ships,
    }  # fmt: skip
    return PipelineEvaluation(result, booster if ships else None, report, ships)


def booster_to_array(booster: lgb.Booster) -> npt.NDArray[np.uint8]:
    """The ranker as a byte array, so it travels with the version's other arrays and checksums."""
    return np.frombuffer(booster.model_to_string().encode(), dtype=np.uint8).copy()


def booster_from_array(array: npt.NDArray[np.uint8]) -> lgb.Booster:
    return lgb.Booster(model_str=bytes(np.asarray(array)).decode())
