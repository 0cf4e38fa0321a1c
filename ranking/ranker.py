"""Learned ranking: the feature matrix for a candidate set, LambdaMART (LightGBM) training and scoring, and the
blended retrieval score used when no ranker is active. Pure: numpy arrays in, numpy arrays out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

from events.features import AFFINITY_HALF_LIFE_SECONDS, INTEREST_WEIGHTS, RATING, RATING_WEIGHT_PER_POINT
from ranking.retrieval import NO_RANK, SOURCES, CandidateSet

SECONDS_PER_DAY = 86_400.0

FEATURE_NAMES: tuple[str, ...] = (
    *(f"{source}_score" for source in SOURCES),
    *(f"{source}_rank" for source in SOURCES),
    "n_sources",
    "als_dot",
    "log_popularity",
    "trend",
    "age_days",
    "log_price",
    "ctr",
    "category_affinity",
    "anchor_recency",
    "history_length",
    "same_category_as_last",
)

# Reciprocal-rank fusion (Cormack et al. 2009): robust to sources whose scores live on different scales.
RRF_K = 60.0
DEFAULT_BLEND_WEIGHTS: dict[str, float] = {
    "ann": 1.0, "item_knn": 1.2, "ease": 1.4, "content": 0.5, "fbt": 0.8, "trending": 0.6, "popular": 0.4,
    "new": 0.3,
}  # fmt: skip


# The blend's tuned knobs (TrainParams.blend_*, chosen on validation by ranking.tuning): one multiplier of the
# default weights per group of sources that play the same part.
BLEND_GROUPS: dict[str, tuple[str, ...]] = {
    "blend_neighbours": ("item_knn", "ease"),
    "blend_ann": ("ann",),
    "blend_content": ("content",),
    "blend_fbt": ("fbt",),
    "blend_global": ("trending", "popular", "new"),
}


def scaled_blend_weights(multipliers: Mapping[str, float]) -> dict[str, float] | None:
    """The default blend weights times each group's multiplier (absent: 1); None when every multiplier is 1 (the
    defaults as they are)."""
    if all(float(multipliers.get(group, 1.0)) == 1.0 for group in BLEND_GROUPS):
        return None
    weights = dict(DEFAULT_BLEND_WEIGHTS)
    for group, sources in BLEND_GROUPS.items():
        for source in sources:
            weights[source] *= float(multipliers.get(group, 1.0))
    return weights


@dataclass(frozen=True, slots=True, eq=False)
class FeatureContext:
    """Everything besides the retrieval scores that the features need, one entry per candidate (aligned with
    ``CandidateSet.item_idx``), plus the customer's side. NaN marks an unknown value (e.g. an item the model
    version has never seen)."""

    category: NDArray[np.int64]
    popularity: NDArray[np.floating]
    trend: NDArray[np.floating]
    age_days: NDArray[np.floating]
    price: NDArray[np.floating]
    als_dot: NDArray[np.floating] | None = None  # user vector · item factors
    ctr: NDArray[np.floating] | None = None  # online click-through rate
    category_affinity: Mapping[int, float] = field(default_factory=dict)
    history_ids: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))  # most recent first
    last_category: int = -1  # category of the latest history item, -1 when none


def candidate_context(
    *,
    model_idx: NDArray[np.int64],
    popularity: NDArray[np.floating],
    trend: NDArray[np.floating],
    category: NDArray[np.int64],
    price: NDArray[np.floating],
    created_ts: NDArray[np.floating],
    now: float,
    item_factors: NDArray[np.floating] | None = None,
    user_vector: NDArray[np.floating] | None = None,
    ctr: NDArray[np.floating] | None = None,
    category_affinity: Mapping[int, float] | None = None,
    history_ids: NDArray[np.int64] | None = None,
    last_category: int = -1,
) -> FeatureContext:
    """The one definition of every non-retrieval feature, called by serving (``ranking.serving``) and by the
    ranker's offline training data (``ranking.pipeline.offline``, the same stage), so both build the same columns.

    Per candidate: ``model_idx`` (its row in the model version's arrays, -1 for an item the version has never seen),
    ``category``, ``price`` (NaN none) and ``created_ts`` (Unix time the item was listed). Per model item:
    ``popularity``, ``trend`` and ``item_factors``. ``now`` is the time the features are "as of": the request's
    time when serving, the split's reference time offline (nothing after it is known). ``history_ids`` are the
    customer's distinct items, newest first, in the same id space as the candidates' anchors.
    """
    known = model_idx >= 0
    safe = np.maximum(model_idx, 0)
    pop = np.where(known, np.asarray(popularity)[safe], 0.0).astype(np.float32)
    tr = np.where(known, np.asarray(trend)[safe], np.nan).astype(np.float32)
    als_dot = None
    if user_vector is not None and item_factors is not None:
        factors = np.asarray(item_factors[safe], np.float32)
        als_dot = np.where(known, factors @ np.asarray(user_vector, np.float32), np.nan).astype(np.float32)
    return FeatureContext(
        category=category, popularity=pop, trend=tr,
        age_days=((now - np.asarray(created_ts, np.float64)) / SECONDS_PER_DAY).astype(np.float32),
        price=np.asarray(price, np.float32), als_dot=als_dot, ctr=ctr,
        category_affinity=category_affinity or {},
        history_ids=history_ids if history_ids is not None else np.empty(0, np.int64),
        last_category=last_category,
    )  # fmt: skip


def category_affinity(
    category: NDArray[np.integer],
    types: NDArray[np.integer],
    values: NDArray[np.floating],
    ts: NDArray[np.floating],
    now: float,
) -> dict[int, float]:
    """Category -> interest weight decayed to ``now``, from raw events: what the online state
    (``events.online``) accumulates in Redis event by event (same weights, same 30-day half-life), recomputed
    offline from the log. Only the shares matter to the feature, so the landmark of the forward decay cancels."""
    types = np.asarray(types, np.int64)
    weight = np.array([INTEREST_WEIGHTS.get(int(t), 0.0) for t in types.tolist()], np.float64)
    rating = types == RATING
    weight[rating] = RATING_WEIGHT_PER_POINT * np.nan_to_num(np.asarray(values, np.float64)[rating])
    weight *= 2.0 ** (-(now - np.asarray(ts, np.float64)) / AFFINITY_HALF_LIFE_SECONDS)
    category = np.asarray(category, np.int64)
    keep = (category >= 0) & (weight > 0)
    if not keep.any():
        return {}
    unique, inverse = np.unique(category[keep], return_inverse=True)
    totals = np.bincount(inverse, weights=weight[keep], minlength=unique.size)
    return dict(zip(unique.tolist(), totals.tolist(), strict=True))


def click_through_rate(
    views: NDArray[np.floating] | NDArray[np.integer], clicks: NDArray[np.floating] | NDArray[np.integer]
) -> NDArray[np.float32]:
    """Clicks per view; NaN where an item had no views (unknown, not zero)."""
    views = np.asarray(views, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(views > 0, np.asarray(clicks, np.float32) / views, np.nan).astype(np.float32)


def build_features(candidates: CandidateSet, context: FeatureContext) -> NDArray[np.float32]:
    """(n_candidates, len(FEATURE_NAMES)) float32, vectorised over the whole candidate set, written column by
    column into one matrix."""
    n = candidates.item_idx.size
    n_sources = len(SOURCES)
    X = np.empty((n, len(FEATURE_NAMES)), np.float32)
    found = candidates.source_rank < NO_RANK
    # Reciprocal ranks, not the sources' raw scores: raw scales differ between sources and between the offline
    # training (ranked lists) and serving, ranks mean the same everywhere. LightGBM treats NaN as "missing",
    # which is what an absent source is.
    X[:, :n_sources] = np.where(found, 1.0 / (1.0 + candidates.source_rank), np.nan)
    X[:, n_sources : 2 * n_sources] = np.where(found, candidates.source_rank, np.nan)
    column = 2 * n_sources
    X[:, column] = found.sum(axis=1)
    X[:, column + 1] = context.als_dot if context.als_dot is not None else np.nan
    X[:, column + 2] = np.log1p(np.asarray(context.popularity, np.float32))
    X[:, column + 3] = context.trend
    X[:, column + 4] = context.age_days
    X[:, column + 5] = np.log1p(np.asarray(context.price, np.float32))
    X[:, column + 6] = context.ctr if context.ctr is not None else np.nan
    category = context.category
    if context.category_affinity:
        # Shares in float64: decayed affinities of old events can be ~1e-50, below float32's range (0/0 = NaN).
        known = np.fromiter(context.category_affinity, np.int64, len(context.category_affinity))
        weight = np.fromiter(context.category_affinity.values(), np.float64, known.size)
        order = np.argsort(known)
        known, share = known[order], weight[order] / (weight.sum() or 1.0)
        at = np.minimum(np.searchsorted(known, category), known.size - 1)
        X[:, column + 7] = np.where(known[at] == category, share[at].astype(np.float32), np.float32(0.0))
    else:
        X[:, column + 7] = 0.0
    history = context.history_ids
    position = np.full(n, np.nan, np.float32)
    anchors = candidates.anchor
    if history.size and (anchors >= 0).any():
        # Where the anchor sits in the history: 0 = the latest event, so "because you just viewed" can win.
        unique_hist, first_pos = np.unique(history, return_index=True)
        has = anchors >= 0
        slot = np.minimum(np.searchsorted(unique_hist, anchors[has]), unique_hist.size - 1)
        hit = unique_hist[slot] == anchors[has]
        values = np.full(int(has.sum()), np.nan, np.float32)
        values[hit] = first_pos[slot[hit]]
        position[has] = values
    X[:, column + 8] = position
    X[:, column + 9] = history.size
    X[:, column + 10] = (category == context.last_category) if context.last_category >= 0 else 0.0
    return X


def blend_scores(candidates: CandidateSet, weights: Mapping[str, float] | None = None) -> NDArray[np.float32]:
    """The fallback ranking score: weighted reciprocal-rank fusion over the sources that found each candidate.

    Weights that leave some candidates at zero (a version tuned without the global sources: the validation users
    all have a history) order those among themselves by the default weights, below every candidate they score: a
    visitor without history got popular, trending and new items all at 0, in catalog order (found by a seventh
    tester, 6 December)."""
    scores = _fused(candidates, weights or DEFAULT_BLEND_WEIGHTS)
    if not weights or weights == DEFAULT_BLEND_WEIGHTS:
        return scores
    unscored = scores <= 0
    if unscored.any():
        fallback = _fused(candidates, DEFAULT_BLEND_WEIGHTS)[unscored]
        top = float(fallback.max())
        if top > 0:
            scored = scores[~unscored]
            ceiling = float(scored.min()) / 2 if scored.size else 1.0
            scores[unscored] = fallback / top * ceiling
    return scores


def _fused(candidates: CandidateSet, weights: Mapping[str, float]) -> NDArray[np.float32]:
    w = np.array([weights.get(source, 0.0) for source in SOURCES], np.float32)
    ranks = candidates.source_rank.astype(np.float32)
    contrib = np.where(candidates.source_rank < NO_RANK, w / (RRF_K + ranks), 0.0)
    return contrib.sum(axis=1).astype(np.float32)


@dataclass(frozen=True)
class RankerParams:
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 20
    feature_fraction: float = 0.9
    early_stopping_rounds: int = 30
    seed: int = 7


def train_ranker(
    X: NDArray[np.float32],
    y: NDArray[np.floating],
    groups: NDArray[np.integer],
    X_valid: NDArray[np.float32],
    y_valid: NDArray[np.floating],
    groups_valid: NDArray[np.integer],
    params: RankerParams | None = None,
) -> lgb.Booster:
    """LambdaMART with NDCG@10 early stopping on a validation set of other users (groups = list sizes)."""
    params = params or RankerParams()
    train_set = lgb.Dataset(X, y, group=groups, feature_name=list(FEATURE_NAMES), free_raw_data=True)
    valid_set = lgb.Dataset(X_valid, y_valid, group=groups_valid, reference=train_set)
    return lgb.train(
        {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "learning_rate": params.learning_rate,
            "num_leaves": params.num_leaves,
            "min_child_samples": params.min_child_samples,
            "feature_fraction": params.feature_fraction,
            "seed": params.seed,
            "deterministic": True,
            "num_threads": 2,
            "verbosity": -1,
        },
        train_set,
        num_boost_round=params.n_estimators,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
    )


def score(booster: lgb.Booster, X: NDArray[np.float32]) -> NDArray[np.float32]:
    """Ranker scores on one thread: serving processes run side by side, each request is small."""
    if X.shape[0] == 0:
        return np.empty(0, np.float32)
    return np.asarray(booster.predict(X, num_threads=1), dtype=np.float32)
