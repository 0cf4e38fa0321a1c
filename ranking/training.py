"""Training every retrieval source from an interaction log: the parameters, the stage-by-stage progress, and the
arrays a model version is made of. Pure: numpy/scipy in and out, no ORM, Redis or settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from tqdm import tqdm

from ranking import ann, sources
from ranking.dataset import InteractionLog, ItemTable, Weighting, basket_matrix, user_item_matrix
from ranking.ranker import BLEND_GROUPS

SOURCE_NAMES: tuple[str, ...] = ("als", "item_knn", "ease", "fbt", "content", "popularity", "trending")

# Interest per event type (Interaction.Type values): the same scale as the online state's interest weights,
# so a purchase is worth eight views everywhere in the system.
DEFAULT_TYPE_WEIGHTS: dict[int, float] = {
    sources.VIEW: 1.0,
    sources.CLICK: 2.0,
    sources.ADD_TO_CART: 4.0,
    sources.PURCHASE: 8.0,
}


@dataclass(frozen=True)
class TrainParams:
    """Every knob of a training run; stored with the version (``parameters`` / meta.json) so runs are comparable.

    Defaults are bench/bench_quality.py's validation choices on Online Retail (two temporal folds inside the
    training period, never the test month); see docs/models.md.
    """

    # How events become weights.
    type_weights: Mapping[int, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    rating_base: float = 0.0
    rating_per_point: float = 1.0
    half_life_days: float | None = 40.0  # recency decay of the training matrix (None: no decay)
    history_half_life_days: float | None = 60.0  # decay of a user's history when scoring / folding in
    aggregate: str = "max"  # a (user, item)'s events: "max" (strongest, most recent) or "sum"
    # iALS.
    als_factors: int = 64
    als_regularization: float = 50.0
    als_alpha: float = 2.0
    als_scaling: str = "linear"  # or "log": c = 1 + alpha * log1p(w / eps)
    als_eps: float = 1.0
    als_iterations: int = 15
    # EASE.
    ease_lambda: float = 800.0  # relative to a binary matrix's Gram diagonal, see sources.ease_lambda
    # Rows of the Gram matrix scaled by (items of the user) ** -exponent: heavy users stop dominating co-occurrence.
    ease_user_exponent: float = 0.75
    # Above this the O(n^2) memory and O(n^3) inverse are skipped. 10,000, not 20,000: a 20,000-item catalog
    # crashed the process (SIGSEGV in LAPACK dpotrf inside ease_fit, seen once, cause not found yet).
    ease_max_items: int = 10_000
    ease_full_max_items: int = 5_000  # the full B matrix is stored up to this size (float32, n^2 * 4 bytes)
    # Neighbour tables.
    neighbours_k: int = 100
    # Serving's retrieval (ranking.pipeline.state.RetrievalParams, read back from the version's params): the latest
    # distinct history items whose neighbours are retrieved (up to the online history's 200) and the weight of the
    # i-th most recent, anchor_decay ** i (1.0: every anchor alike). Tuned on validation without retraining.
    anchors: int = 20
    anchor_decay: float = 0.85
    anchor_floor: float = 0.0  # the share every anchor keeps: weight floor + (1 - floor) * anchor_decay ** i
    ease_whole_history: bool = False  # EASE from every history item alike, not the anchors (RetrievalParams)
    # The blend (served when no ranker ships): multipliers of the default source weights per group of sources
    # (ranking.ranker.BLEND_GROUPS), tuned on validation without retraining; 1.0 keeps a group's defaults.
    blend_neighbours: float = 1.0
    blend_ann: float = 1.0
    blend_content: float = 1.0
    blend_fbt: float = 1.0
    blend_global: float = 1.0
    knn_method: str = "bm25"
    knn_bm25_k1: float = 1.2
    knn_bm25_b: float = 0.75
    # Frequently bought together.
    fbt_k: int = 50
    fbt_min_count: int = 2
    fbt_min_confidence: float = 0.01
    fbt_min_lift: float = 1.0
    fbt_max_basket: int = 100
    # Content.
    content_dims: int = 64
    content_k: int = 50
    # Popularity and trending.
    popularity_half_life_days: float | None = 7.0
    trending_recent_days: float = 14.0
    trending_baseline_days: float = 56.0
    trending_smoothing: float = 20.0
    # ANN index over the ALS item factors.
    ann_kind: str = "auto"
    ann_recall_target: float = ann.DEFAULT_RECALL_TARGET
    ann_flat_max_items: int = ann.FLAT_MAX_ITEMS
    # Validation and promotion.
    validation_days: float = 30.0
    validation_max_users: int = 5_000
    # The window validates only when it holds at least this many users with a new item and this share of the
    # users with validation_min_history+ events; else each user's own last validation_tail_fraction of events
    # plus validation_random_fraction of their other items at random (ranking.tuning.validation_plan): what they did
    # next and what else from their whole history a list should find, both asked of a "for you" list.
    validation_min_users: int = 50
    validation_min_share: float = 1 / 3
    validation_min_history: int = 3
    validation_tail_fraction: float = 0.2
    validation_random_fraction: float = 0.1
    # Tuning (ranking.tuning): seconds the Optuna search may take (0: keep these values), and its trial cap.
    tune_budget_seconds: float = 60.0
    tune_max_trials: int = 200
    tune_max_users: int = 1_000  # validation users each trial serves (a seeded sample; the final validation uses all)
    promotion_source: str = "als"
    promotion_tolerance: float = 0.005
    # When the version keeps its LambdaMART ranker: "auto" when the pipeline with it reaches the best single
    # source's NDCG on held-out users, "always" (e.g. to measure serving with it), "never" (serve the blend).
    ranker_ship: str = "auto"
    # What the version serves: "pipeline" (ranker or blend) or "source:<name>" (that source alone through the same
    # re-ranker); "auto" lets training choose the better on validation (never worse than its best part).
    serve: str = "auto"
    k: int = 10
    seed: int = 42
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.aggregate not in ("max", "sum"):
            raise ValueError(f"aggregate must be 'max' or 'sum', not {self.aggregate!r}")
        if self.promotion_source not in SOURCE_NAMES:
            raise ValueError(f"promotion_source must be one of {', '.join(SOURCE_NAMES)}")
        if self.ranker_ship not in ("auto", "always", "never"):
            raise ValueError(f"ranker_ship must be 'auto', 'always' or 'never', not {self.ranker_ship!r}")
        if self.serve != "auto" and self.serve != "pipeline" and not self.serve.startswith("source:"):
            raise ValueError(f"serve must be 'auto', 'pipeline' or 'source:<name>', not {self.serve!r}")
        if not 1 <= self.anchors <= 200:
            raise ValueError(f"anchors must be between 1 and 200 (the online history's length), not {self.anchors}")
        if not 0.0 < self.anchor_decay <= 1.0:
            raise ValueError(f"anchor_decay must be in (0, 1], not {self.anchor_decay}")
        if not 0.0 <= self.anchor_floor <= 1.0:
            raise ValueError(f"anchor_floor must be in [0, 1], not {self.anchor_floor}")
        for group in BLEND_GROUPS:
            value = getattr(self, group)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{group} must be a finite number >= 0, not {value!r}")
        if self.knn_method not in ("bm25", "cosine"):
            raise ValueError(f"knn_method must be 'bm25' or 'cosine', not {self.knn_method!r}")

    @property
    def weighting(self) -> Weighting:
        return Weighting(
            type_weights=dict(self.type_weights),
            rating_base=self.rating_base,
            rating_per_point=self.rating_per_point,
            half_life_days=self.half_life_days,
            aggregate=self.aggregate,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["type_weights"] = {str(k): v for k, v in self.type_weights.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainParams:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "type_weights" in values:
            values["type_weights"] = {int(k): float(v) for k, v in values["type_weights"].items()}
        return cls(**values)

    def replace(self, **changes: Any) -> TrainParams:
        return dataclasses.replace(self, **changes)

    def with_overrides(self, assignments: Sequence[str]) -> TrainParams:
        """``["als_factors=128", "half_life_days=null"]`` (values are JSON; bare words are strings).

        Raises ValueError naming the unknown parameter or the bad value.
        """
        types = {f.name: str(f.type) for f in dataclasses.fields(self)}
        known = set(types)
        changes: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ValueError(f"unknown parameter {key!r} in {assignment!r}; known: {', '.join(sorted(known))}")
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):  # not JSON (or nested past the parser's stack): the text itself
                value = raw
            if key == "type_weights":
                if not isinstance(value, dict):
                    raise ValueError('type_weights takes a JSON object, e.g. {"1": 1, "4": 8}')
                value = {int(k): float(v) for k, v in value.items()}
            _check_type(key, types[key], value)
            _check_range(key, value)
            changes[key] = value
        return dataclasses.replace(self, **changes)


def _check_type(name: str, annotation: str, value: Any) -> None:
    """A parameter's value fits its declared type (``--param half_life_days=none`` must fail here, naming the
    parameter, not later inside training)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    accepted = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": number,
        "float | None": number or value is None,
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }
    if annotation in accepted and not accepted[annotation]:
        expected = {
            "int": "an integer", "float": "a number", "float | None": "a number or null", "str": "a string",
            "bool": "true or false",
        }  # fmt: skip
        raise ValueError(f"{name} takes {expected[annotation]}, not {value!r}")


# What a value given with --param must lie in (checked there, not in __post_init__: a version trained before a rule
# must still load). Counts are at least 1 (neighbours_k=-1 crashed the process in a native library; als_factors=0
# trained a version of 0-dimension vectors); half-lives are positive or null (no decay); fractions in [0, 1].
_AT_LEAST_1 = frozenset({
    "als_factors", "als_iterations", "neighbours_k", "fbt_k",
    "fbt_min_count", "fbt_max_basket", "content_dims", "content_k", "validation_max_users", "validation_min_users",
    "validation_min_history", "tune_max_trials", "tune_max_users", "k",
})  # fmt: skip
_POSITIVE = frozenset({
    "half_life_days", "history_half_life_days", "popularity_half_life_days", "trending_recent_days",
    "trending_baseline_days", "ease_lambda", "als_eps",
})  # fmt: skip
_FRACTIONS = frozenset({
    "ease_user_exponent", "knn_bm25_b", "fbt_min_confidence", "ann_recall_target", "validation_min_share",
    "validation_tail_fraction", "validation_random_fraction", "anchor_floor", "anchor_decay",
})  # fmt: skip
_NON_NEGATIVE = frozenset({
    "als_regularization", "als_alpha", "knn_bm25_k1", "fbt_min_lift", "trending_smoothing", "tune_budget_seconds",
    "promotion_tolerance", "ann_flat_max_items", "num_threads",
    "validation_days", "ease_max_items", "ease_full_max_items",  # 0: off (no time window; EASE not fitted)
})  # fmt: skip


def _check_range(name: str, value: Any) -> None:
    """A --param value within what training can use, or ValueError naming the parameter and the range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        finite = False
    if not finite:
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if name in _AT_LEAST_1 and value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")
    if name in _POSITIVE and value <= 0:
        raise ValueError(f"{name} must be above 0 (or null for no decay, where it is a half-life), not {value!r}")
    if name in _FRACTIONS and not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
    if name in _NON_NEGATIVE and value < 0:
        raise ValueError(f"{name} must be 0 or more, not {value!r}")


class StageTimer:
    """Stage-by-stage progress: a tqdm bar on stderr (or nothing) plus the timing of every stage, for the table."""

    def __init__(
        self,
        stages: Sequence[str] = (),
        *,
        desc: str = "train",
        file: IO[str] | None = None,
        enabled: bool = True,
    ) -> None:
        self.timings: dict[str, float] = {}
        self._file = file or sys.stderr
        self._enabled = enabled
        self._bar = tqdm(
            total=len(stages) or None,
            desc=desc,
            file=self._file,
            # A bar redrawn into a log file is noise: without a terminal only the per-stage lines are printed.
            disable=not (enabled and getattr(self._file, "isatty", lambda: False)()),
            leave=False,
            bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed} {postfix}",
        )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._bar.set_postfix_str(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.timings[name] = self.timings.get(name, 0.0) + seconds
            self._bar.update(1)
            if self._enabled:
                self._bar.write(f"  {name:<28} {seconds:8.2f} s", file=self._file)

    def close(self) -> None:
        self._bar.close()

    def table(self) -> str:
        width = max((len(name) for name in self.timings), default=5)
        lines = [f"{name:<{width}}  {seconds:8.2f} s" for name, seconds in self.timings.items()]
        lines.append(f"{'total':<{width}}  {sum(self.timings.values()):8.2f} s")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class TrainedSources:
    """The arrays of one training run, named as the version's files (see docs/models.md), plus facts about it."""

    arrays: dict[str, np.ndarray]
    params: TrainParams
    reference_ts: float
    info: dict[str, Any]

    def get(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)

    @property
    def n_items(self) -> int:
        return int(self.arrays["item_ids"].size)


def content_vectors(items: ItemTable, params: TrainParams) -> npt.NDArray[np.float32]:
    """Content vectors depend on the catalog only, so a validation run and the final run share one computation."""
    return sources.content_fit(list(items.texts), dims=params.content_dims, seed=params.seed)


def train_sources(
    log: InteractionLog,
    items: ItemTable,
    params: TrainParams,
    *,
    reference_ts: float | None = None,
    timer: StageTimer | None = None,
    content: npt.NDArray[np.float32] | None = None,
    include: Sequence[str] = SOURCE_NAMES,
    content_neighbours: bool = True,
) -> TrainedSources:
    """Train the sources in ``include`` on ``log``. ``reference_ts`` ("now" for the decays) defaults to the
    log's :meth:`~ranking.dataset.InteractionLog.reference_ts`. ``content`` reuses precomputed content vectors.
    """
    if log.n_items != items.n_items:
        raise ValueError("the log and the item table disagree on the number of items")
    timer = timer or StageTimer(enabled=False)
    ref = float(reference_ts if reference_ts is not None else (log.reference_ts() or time.time()))
    weighting = params.weighting
    arrays: dict[str, np.ndarray] = {
        "item_ids": items.item_ids.astype(np.int64),
        "item_category": items.category.astype(np.int32),
        "user_ids": log.user_ids.astype(np.int64),
    }
    info: dict[str, Any] = {"skipped": {}, "time_range": log.time_range()}
    with timer.stage("weights"):
        weights = user_item_matrix(log, weighting, reference_ts=ref)
        arrays["item_user_count"] = log.item_user_counts()
    info["sizes"] = {
        "n_users": log.n_users,
        "n_items": items.n_items,
        "n_interactions": len(log),
        "n_user_items": int(weights.nnz),
    }
    if "als" in include:
        with timer.stage("als"):
            user_f, item_f = _train_als(weights, params)
            arrays["als_item_factors"] = item_f
            arrays["als_user_factors"] = user_f
            y = item_f.astype(np.float64)
            arrays["als_yty"] = y.T @ y
    if "item_knn" in include:
        with timer.stage("item_knn"):
            arrays["knn_idx"], arrays["knn_score"] = sources.item_knn_fit(
                weights,
                k=params.neighbours_k,
                method=params.knn_method,
                bm25_k1=params.knn_bm25_k1,
                bm25_b=params.knn_bm25_b,
                num_threads=params.num_threads,
            )
    if "ease" in include:
        if items.n_items > params.ease_max_items:
            info["skipped"]["ease"] = f"{items.n_items:,} items > ease_max_items {params.ease_max_items:,}"
        else:
            with timer.stage("ease"):
                x = _user_scaled(weights, params.ease_user_exponent)
                b = sources.ease_fit(x, sources.ease_lambda(x, params.ease_lambda))
                arrays["ease_idx"], arrays["ease_score"] = _dense_rows_top_k(b, params.neighbours_k)
                if items.n_items <= params.ease_full_max_items:
                    arrays["ease_b"] = b
                del b
    if "fbt" in include:
        with timer.stage("fbt"):
            baskets = basket_matrix(log, max_basket=params.fbt_max_basket)
            arrays["fbt_idx"], arrays["fbt_score"], arrays["fbt_lift"] = sources.fbt_fit(
                baskets,
                k=params.fbt_k,
                min_count=params.fbt_min_count,
                min_confidence=params.fbt_min_confidence,
                min_lift=params.fbt_min_lift,
            )
            info["sizes"]["n_baskets"] = int(baskets.shape[0])
    if "content" in include:
        with timer.stage("content"):
            vectors = content if content is not None else content_vectors(items, params)
            arrays["content_vectors"] = vectors
            if content_neighbours:
                arrays["content_idx"], arrays["content_score"] = ann.neighbours_table(
                    vectors, params.content_k, flat_max_items=params.ann_flat_max_items, seed=params.seed
                )
    if "popularity" in include or "trending" in include:
        with timer.stage("popularity_trending"):
            event_w = sources.event_weights(
                log.type,
                log.value,
                params.type_weights,
                rating_base=params.rating_base,
                rating_per_point=params.rating_per_point,
            )
            arrays["popularity"] = sources.popularity(
                log.item,
                event_w,
                log.ts,
                reference_ts=ref,
                half_life_days=params.popularity_half_life_days,
                n_items=items.n_items,
            )
            arrays["trending"] = sources.trending(
                log.item,
                event_w,
                log.ts,
                reference_ts=ref,
                recent_days=params.trending_recent_days,
                baseline_days=params.trending_baseline_days,
                smoothing=params.trending_smoothing,
                n_items=items.n_items,
            )
    return TrainedSources(arrays=arrays, params=params, reference_ts=ref, info=info)


def _user_scaled(weights: sp.csr_matrix, exponent: float) -> sp.csr_matrix:
    """Each user's row times (their number of items) ** (-exponent / 2), so X^T X counts a pair from a user with
    n items n ** -exponent times instead of once."""
    if not exponent:
        return weights
    counts = np.diff(weights.indptr).astype(np.float64)
    scale = np.where(counts > 0, counts, 1.0) ** (-exponent / 2.0)
    return sp.csr_matrix(sp.diags(scale) @ weights, dtype=np.float32)


def als_confidences(weights: sp.csr_matrix, params: TrainParams) -> sp.csr_matrix:
    conf = sp.csr_matrix(weights, dtype=np.float32, copy=True)
    conf.data = sources.confidence(conf.data, alpha=params.als_alpha, scaling=params.als_scaling, eps=params.als_eps)
    return conf


def _train_als(weights: sp.csr_matrix, params: TrainParams) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    return sources.als_fit(
        als_confidences(weights, params),
        factors=params.als_factors,
        regularization=params.als_regularization,
        iterations=params.als_iterations,
        seed=params.seed,
        num_threads=params.num_threads,
    )


def _dense_rows_top_k(
    matrix: npt.NDArray[np.float32], k: int, block: int = 2048
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """Row-wise top-``k`` positive entries of a dense square matrix, in row blocks to bound the extra memory."""
    n = matrix.shape[0]
    idx = np.full((n, k), -1, dtype=np.int32)
    score = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, block):
        rows = matrix[start : start + block]
        top = sources.dense_top_k(rows, k, min_score=0.0)
        valid = top >= 0
        idx[start : start + block] = top
        gathered = np.take_along_axis(rows, np.maximum(top, 0), axis=1)
        score[start : start + block] = np.where(valid, gathered, 0.0)
    return idx, score
