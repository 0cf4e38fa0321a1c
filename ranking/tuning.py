"""Training that fits the shop's data: which validation protocol the log supports, the Optuna search of the
training parameters on it within a time budget, and the "never worse than its parts" choice of what to serve.
Pure: numpy and Optuna, no ORM, Redis or settings.

The validation protocol: the window's last ``validation_days`` when it holds enough users (at least
``validation_min_users`` and ``validation_min_share`` of the users with enough history to hold some out), else each
user's own tail (their last ``validation_tail_fraction`` of events), which fits logs whose users were active at
different times over months or years, together with ``validation_random_fraction`` (10%) of each user's other
items at random: a log with no window that asks "what comes next" of everyone at once is asked two questions per
user instead, what they did next and what else from their whole history a list should find. The two want different
knobs (on MovieLens 100K the recency that wins the first loses two fifths of the second); validated on the tail
alone, a version chose recency and served 0.29 NDCG@10 on a random per-user split against 0.47 validated on both,
while the temporal split's figure stayed (0.2536 vs 0.2553; docs/benchmarks.md). The two questions weigh the same,
in proportion: the objective is the geometric mean of their NDCG@k (:func:`ranking.metrics.balanced`), so a
setting must not buy a gain on one with a larger relative loss on the other; pooled into one set of held-out
items, the tail (about 2.6 times as many items on MovieLens 100K) would decide alone (docs/models.md, "Two
questions, weighed alike").

The search: a TPE sampler with a fixed seed over discrete grids (repeated values reuse trained sources), in four
phases, the most telling first: the decay half-lives (no decay is a candidate) and EASE's lambda and user
exponent; serving's retrieval knobs (how many history anchors, their recency decay and the floor every anchor keeps:
re-serving only, no retraining; the defaults, "every anchor alike" and "every anchor, recency on a 0.3 floor"
first); the blend's source weights (a multiplier per group of sources, re-serving only; the defaults and "without
trending, popular and new arrivals" first); then the other sources' hyper-parameters, each phase with the earlier
phases' choices fixed. Each trial trains the sources on the validation
split's training part and scores the served pipeline (retrieval from every source, the blend, the 30% category
cap) and every single source on its users: the objective is the NDCG@k of what the version would serve, the
pipeline or its best single source when that is better (:func:`serve_choice`), balanced over the questions. The
defaults are always the first trial, so tuning never chooses something worse than the defaults on validation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna

from ranking import ann, confidence, evaluation, metrics
from ranking.dataset import InteractionLog, ItemTable
from ranking.pipeline import PIPELINE, TrainedModel, offline_inputs, served_lists, served_quality
from ranking.pipeline.offline import (
    BLEND_ROW,
    RANKER_ROW,
    UNSEEN_SEGMENT,
    served_ndcg_per_question,
    served_ndcg_per_user,
)
from ranking.training import TrainedSources, TrainParams, train_sources

FloatArray = npt.NDArray[np.float64]

logger = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # train prints its own line per trial

WINDOW, USER_TAIL = "window", "user_tail"
SOURCE_PREFIX = "source:"
# Sources a version may serve alone (through the same re-ranker) when it beats the pipeline on validation.
SERVABLE_SOURCES = ("als", "item_knn", "ease", "popularity")

# The search space: discrete grids around each knob's usual range (None = no decay).
DECAY_SPACE: dict[str, Sequence[Any]] = {
    "half_life_days": (None, 14.0, 40.0, 120.0, 365.0),
    "history_half_life_days": (None, 14.0, 60.0, 180.0, 365.0),
    "popularity_half_life_days": (None, 3.0, 7.0, 30.0, 180.0),
    "ease_lambda": (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0),
    "ease_user_exponent": (0.0, 0.5, 0.75, 1.0),
}
# Serving's retrieval knobs (ranking.pipeline.state.RetrievalParams): no retraining, only re-serving.
# 200 anchors = the whole online history; decay 1.0 = no recency weighting.
RETRIEVAL_SPACE: dict[str, Sequence[Any]] = {
    "anchors": (20, 50, 100, 200),
    "anchor_decay": (0.85, 0.95, 0.99, 1.0),
    "anchor_floor": (0.0, 0.1, 0.3, 0.5, 1.0),
    "ease_whole_history": (False, True),
}
# The blend's weights (ranking.ranker.BLEND_GROUPS: a multiplier of the defaults per group): re-serving only.
BLEND_SPACE: dict[str, Sequence[Any]] = {
    "blend_neighbours": (0.5, 1.0, 2.0),
    "blend_ann": (0.0, 0.5, 1.0, 2.0),
    "blend_content": (0.0, 0.5, 1.0, 2.0),
    "blend_fbt": (0.0, 1.0, 2.0),
    "blend_global": (0.0, 0.25, 0.5, 1.0, 2.0),
}
SOURCE_SPACE: dict[str, Sequence[Any]] = {
    "als_factors": (32, 64, 128),
    "als_regularization": (5.0, 20.0, 50.0, 150.0),
    "als_alpha": (0.5, 1.0, 2.0, 5.0, 10.0),
    "neighbours_k": (50, 100, 200),
    "knn_bm25_k1": (0.6, 1.2, 2.0),
    "knn_bm25_b": (0.25, 0.5, 0.75, 1.0),
}
# Which parameters each source's arrays depend on (a trial retrains only the sources whose inputs changed).
SOURCE_INPUTS: dict[str, tuple[str, ...]] = {
    "als": ("half_life_days", "als_factors", "als_regularization", "als_alpha"),
    "item_knn": ("half_life_days", "neighbours_k", "knn_bm25_k1", "knn_bm25_b"),
    "ease": ("half_life_days", "ease_lambda", "ease_user_exponent", "neighbours_k"),
    "fbt": (),
    "content": (),
    "popularity": ("popularity_half_life_days",),
}


# --- The validation protocol ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationPlan:
    """Which protocol validates this log, and why (printed by ``train`` and recorded in the version)."""

    protocol: str  # WINDOW, USER_TAIL or "none"
    reason: str
    window_users: int  # users with a new item in the last validation_days
    eligible_users: int  # users with enough events to hold some out

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "reason": self.reason,
            "window_users": self.window_users,
            "eligible_users": self.eligible_users,
        }


def validation_plan(log: InteractionLog, params: TrainParams) -> tuple[ValidationPlan, evaluation.Split | None]:
    """Choose the protocol and build its split (sampled to ``validation_max_users``); None when nothing can be
    held out."""
    counts = log.user_event_counts()
    eligible = int((counts >= params.validation_min_history).sum())
    first, last = log.time_range() if len(log) else (0.0, 0.0)
    window: evaluation.Split | None = None
    window_users = 0
    span_days = (last - first) / 86_400.0
    if params.validation_days and span_days > 2 * params.validation_days:
        window = evaluation.split_temporal(log, holdout_days=params.validation_days)
        window_users = window.n_test_users
    needed = max(params.validation_min_users, math.ceil(params.validation_min_share * eligible))
    if window is not None and window_users >= needed:
        plan = ValidationPlan(
            WINDOW,
            f"the last {params.validation_days:g} days hold {window_users:,} users with a new item, at least "
            f"{needed:,} (max of {params.validation_min_users} and {params.validation_min_share:.0%} of the "
            f"{eligible:,} users with {params.validation_min_history}+ events)",
            window_users,
            eligible,
        )
        split = window
    else:
        why = (
            f"the data span {span_days:.0f} days, not more than twice the {params.validation_days:g}-day window"
            if window is None
            else f"the last {params.validation_days:g} days hold only {window_users:,} users with a new item, fewer "
            f"than {needed:,} (max of {params.validation_min_users} and {params.validation_min_share:.0%} of the "
            f"{eligible:,} users with {params.validation_min_history}+ events)"
        )
        split = evaluation.split_user_tail(
            log, fraction=params.validation_tail_fraction, min_history=params.validation_min_history,
            random_fraction=params.validation_random_fraction, seed=params.seed,
        )  # fmt: skip
        if split.n_test_users == 0:
            return ValidationPlan("none", f"{why}, and no user has enough events to hold some out", 0, eligible), None
        plan = ValidationPlan(
            USER_TAIL,
            f"{why}: each user's last {params.validation_tail_fraction:.0%} of events is held out instead"
            + (
                f", with {params.validation_random_fraction:.0%} of their other items at random"
                if params.validation_random_fraction
                else ""
            ),
            window_users,
            eligible,
        )
    if split.n_test_users == 0:
        return plan, None
    return plan, split.sample_users(params.validation_max_users, params.seed)


# --- The search -----------------------------------------------------------------------------------------------


@dataclass
class Trial:
    number: int
    phase: str
    params: dict[str, Any]
    ndcg: float  # the pipeline's NDCG@k (blend, 30% cap)
    singles: dict[str, float]  # every servable source's NDCG@k under the same cap
    seconds: float
    # Per validation user, NDCG@k of the pipeline ("pipeline") and of each servable source: the serve choice's
    # paired comparison (not recorded in the version).
    per_user: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict, repr=False)
    # Per mode ("pipeline" and each source), each validation question's NDCG@k when the split asks two: ``ndcg`` and
    # ``singles`` are then their geometric mean (:func:`ranking.metrics.balanced`).
    by_question: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per mode, each question's per-user NDCG@k (the tie-break between trials, :func:`hedged_choice`; not recorded).
    per_question: dict[str, dict[str, FloatArray]] = field(default_factory=dict, repr=False)

    @property
    def served_mode(self) -> str:
        """The mode :attr:`served_ndcg` is the figure of: "pipeline", or the better single source's name."""
        best = self.best_source
        return best if best is not None and self.best_source_ndcg > self.ndcg else PIPELINE

    @property
    def best_source(self) -> str | None:
        return max(self.singles, key=self.singles.__getitem__, default=None)

    @property
    def best_source_ndcg(self) -> float:
        return max(self.singles.values(), default=0.0)

    @property
    def served_ndcg(self) -> float:
        """What the version would serve with these values: the pipeline or its better single source."""
        return max(self.ndcg, self.best_source_ndcg)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.number,
            "phase": self.phase,
            "params": self.params,
            "ndcg": round(self.ndcg, 5),
            "best_source": self.best_source,
            "best_source_ndcg": round(self.best_source_ndcg, 5),
            "singles": {name: round(value, 5) for name, value in self.singles.items()},
            "served_ndcg": round(self.served_ndcg, 5),
            "seconds": round(self.seconds, 2),
            **({"by_question": _rounded(self.by_question)} if self.by_question else {}),
        }


def _rounded(by_question: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {mode: {question: round(v, 5) for question, v in values.items()} for mode, values in by_question.items()}


@dataclass
class TuningResult:
    params: TrainParams
    chosen: dict[str, Any]  # the tuned knobs' values
    trials: list[Trial] = field(default_factory=list)
    budget_seconds: float = 0.0
    seconds: float = 0.0
    users: int = 0
    chosen_trial: int | None = None  # the number of the trial whose values were chosen (the last phase's choice)
    hedges: list[str] = field(default_factory=list)  # each phase's choice that was not its best trial, and why

    @property
    def best(self) -> Trial | None:
        """The trial whose values were chosen: each phase's best, or a tied one that gives up less on either
        question (:func:`hedged_choice`)."""
        return next((t for t in self.trials if t.number == self.chosen_trial), None)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "chosen": self.chosen,
            "budget_seconds": self.budget_seconds,
            "seconds": round(self.seconds, 2),
            "validation_users": self.users,
            "n_trials": len(self.trials),
            "best_trial": best.number if best else None,
            "best_served_ndcg": round(best.served_ndcg, 5) if best else None,
            "hedges": self.hedges,
            "trials": [t.to_dict() for t in self.trials],
        }


class _SourceCache:
    """Trained arrays per source, keyed by the parameters they depend on: a trial retrains only what changed."""

    def __init__(self, split: evaluation.Split, items: ItemTable, vectors: npt.NDArray[np.float32]) -> None:
        self.split, self.items, self.vectors = split, items, vectors
        self._arrays: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}
        self._content: tuple[np.ndarray, np.ndarray] | None = None  # computed on first use

    def trained(self, params: TrainParams) -> TrainedSources:
        arrays: dict[str, np.ndarray] = {}
        info: dict[str, Any] = {}
        for source, inputs in SOURCE_INPUTS.items():
            key = (source, *(getattr(params, name) for name in inputs))
            if key not in self._arrays:
                include = (source, "trending") if source == "popularity" else (source,)
                run = train_sources(
                    self.split.train, self.items, params, reference_ts=self.split.reference_ts,
                    content=self.vectors, include=include, content_neighbours=False,
                )  # fmt: skip
                self._arrays[key] = run.arrays
                info = run.info
            arrays.update(self._arrays[key])
        # Content neighbours depend on the catalog only: once per search, as serving has them (exact search on a
        # catalog small enough; larger ones fall back to the profile recommender, as the offline pipeline does).
        if self._content is None:
            small = self.vectors.shape[0] < params.ann_flat_max_items
            self._content = (
                ann.neighbours_table(self.vectors, params.content_k, flat_max_items=params.ann_flat_max_items)
                if small
                else None
            )
        if self._content is not None:
            arrays["content_idx"], arrays["content_score"] = self._content
        return TrainedSources(arrays=arrays, params=params, reference_ts=self.split.reference_ts, info=info)


def score_params(
    cache: _SourceCache, params: TrainParams
) -> tuple[float, dict[str, float], dict[str, npt.NDArray[np.float64]]]:
    """THE objective, the one place that knows how a version is judged offline: the NDCG@k of the lists the version
    would serve the split's users (``ranking.pipeline.served_lists``: the same stages as the API, the default
    surface config's 30% category cap, purchased and rated items left out) in the "pipeline" mode (the blend: the
    ranker is fitted afterwards, on the chosen values) and in each servable "source:<name>" mode, balanced over the
    split's questions when it asks two (``ranking.metrics.balanced``). Returns the pipeline's figure, each
    source's, and the per-user figures of all of them (keyed "pipeline" and source name)."""
    figures, _, per_user, _ = score_questions(cache, params)
    pipeline = figures.pop(PIPELINE)
    return pipeline, figures, per_user


def score_questions(
    cache: _SourceCache, params: TrainParams
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, FloatArray], dict[str, dict[str, FloatArray]]]:
    """:func:`score_params`' work: per mode ("pipeline" and each servable source's name) the objective's figure
    (``ranking.metrics.balanced`` over the split's questions, or the plain NDCG@k when it asks one), each
    question's NDCG@k, and the per-user figures the serve choice compares (``ranking.metrics.balanced_per_user``
    with two questions, else each user's NDCG@k), and per mode each question's per-user NDCG@k (empty with one
    question)."""
    trained = cache.trained(params)
    model = TrainedModel(trained)
    inputs = offline_inputs(cache.split, cache.items, model)
    figures: dict[str, float] = {}
    by_question: dict[str, dict[str, float]] = {}
    per_user: dict[str, npt.NDArray[np.float64]] = {}
    per_question: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
    for mode in (PIPELINE, *(SOURCE_PREFIX + name for name in SERVABLE_SOURCES)):
        name = mode.removeprefix(SOURCE_PREFIX)
        if mode != PIPELINE and not _has_source(trained, name):
            continue
        lists = served_lists(model, cache.split, cache.items, serve=mode, k=params.k, inputs=inputs)
        if cache.split.questions:
            per_question[name] = served_ndcg_per_question(cache.split, lists, k=params.k)
            by_question[name] = {question: metrics.nan_mean(values) for question, values in per_question[name].items()}
            figures[name] = metrics.balanced(by_question[name])
        else:
            quality = served_quality(cache.split, lists, k=params.k, item_category=cache.items.category)
            figures[name] = float(quality[f"ndcg@{params.k}"])
            per_user[name] = served_ndcg_per_user(cache.split, lists, k=params.k)
    if cache.split.questions:
        per_user = metrics.balanced_per_user(per_question)
    return figures, by_question, per_user, per_question


def _has_source(trained: TrainedSources, name: str) -> bool:
    """Whether the version has the arrays a single-source mode serves from (EASE is skipped on large catalogs)."""
    needs = {"als": "als_item_factors", "item_knn": "knn_idx", "ease": "ease_idx", "popularity": "popularity"}
    return needs.get(name, name) in trained.arrays


def tune(
    split: evaluation.Split,
    items: ItemTable,
    params: TrainParams,
    vectors: npt.NDArray[np.float32],
    *,
    budget_seconds: float,
    max_trials: int = 200,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuningResult:
    """Search the four phases' grids with TPE (seeded) until ``budget_seconds`` would be exceeded by one more
    trial (estimated from the latest trial) or ``max_trials`` ran. The first trial of each phase is the current
    value of its knobs; each phase goes on from its choice (:func:`hedged_choice`: its best trial, or a tied one
    that gives up less on either validation question), and the result's params are the last phase's choice."""
    started = time.perf_counter()
    deadline = started + max(budget_seconds, 0.0)
    cache = _SourceCache(split.sample_users(params.tune_max_users, params.seed), items, vectors)
    trials: list[Trial] = []
    best = params
    chosen_trial: int | None = None
    hedges: list[str] = []
    latest = 0.0
    phases = (
        ("decay", DECAY_SPACE, 0.4), ("retrieval", RETRIEVAL_SPACE, 0.6), ("blend", BLEND_SPACE, 0.8),
        ("sources", SOURCE_SPACE, 1.0),
    )  # fmt: skip
    for phase, grids, share in phases:
        phase_deadline = started + share * max(budget_seconds, 0.0)
        base = best
        space = {name: _with_value(values, getattr(base, name)) for name, values in grids.items()}
        sampler = optuna.samplers.TPESampler(seed=params.seed, n_startup_trials=6)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.enqueue_trial({name: getattr(base, name) for name in space})
        if phase == "decay":
            study.enqueue_trial({**{name: getattr(base, name) for name in space}, **_no_decay()})
        if phase == "retrieval":
            whole = max(RETRIEVAL_SPACE["anchors"])
            current = {name: getattr(base, name) for name in space}
            # EASE over the whole history beside the current anchors of the other sources; every anchor alike;
            # every anchor, recency on a 0.3 floor.
            study.enqueue_trial({**current, "ease_whole_history": True})
            for decay, floor in ((1.0, 1.0), (0.85, 0.3)):
                study.enqueue_trial(
                    {"anchors": whole, "anchor_decay": decay, "anchor_floor": floor, "ease_whole_history": False}
                )
        if phase == "blend":
            # The personal sources alone: trending, popular and new arrivals out of the blend.
            study.enqueue_trial({**{name: getattr(base, name) for name in space}, "blend_global": 0.0})

        def objective(trial: optuna.Trial, space: Mapping[str, Sequence[Any]] = space, base: TrainParams = base,
                      phase: str = phase) -> float:  # fmt: skip
            nonlocal latest
            t0 = time.perf_counter()
            chosen = {name: trial.suggest_categorical(name, list(values)) for name, values in space.items()}
            candidate = base.replace(**chosen)
            singles, by_question, per_user, per_question = score_questions(cache, candidate)
            ndcg = singles.pop(PIPELINE)
            seconds = time.perf_counter() - t0
            # The next trial's cost: the latest one's (the first trains every source; later ones reuse most).
            latest = seconds
            record = Trial(len(trials), phase, chosen, ndcg, singles, seconds, per_user, by_question, per_question)
            trials.append(record)
            if on_trial is not None:
                on_trial(record)
            # What the version would serve: the pipeline, or its best single source when that is better (the
            # never-worse rule, see serve_choice), so a source that will be served alone is tuned too.
            return max(ndcg, record.best_source_ndcg)

        enqueued = len(study.trials)
        phase_trials = max(enqueued, min(round(share * max_trials), max_trials) - len(trials))

        def stop_when_out_of_time(
            study: optuna.Study, _trial: Any, limit: float = phase_deadline, first: int = len(trials) + enqueued
        ) -> None:
            # The enqueued candidates (the current values, no decay) always run; then one more trial only if it
            # would end before the phase's share of the budget (estimated from the latest trial).
            if len(trials) >= first and time.perf_counter() + latest > min(limit, deadline):
                study.stop()

        if trials and (time.perf_counter() + latest > phase_deadline or phase_trials <= 0):
            continue
        first_of_phase = len(trials)
        study.optimize(objective, n_trials=phase_trials, callbacks=[stop_when_out_of_time], gc_after_trial=False)
        if len(trials) == first_of_phase:  # no trial of this phase ran: the values stay
            continue
        winner, hedge = hedged_choice(trials[first_of_phase:], seed=params.seed)
        chosen_trial, best = winner.number, base.replace(**winner.params)
        if hedge:
            hedges.append(hedge)
    spaces = (DECAY_SPACE, RETRIEVAL_SPACE, BLEND_SPACE, SOURCE_SPACE)
    chosen = {name: getattr(best, name) for space in spaces for name in space}
    return TuningResult(
        params=best,
        chosen=chosen,
        trials=trials,
        budget_seconds=budget_seconds,
        seconds=time.perf_counter() - started,
        users=cache.split.n_test_users,
        chosen_trial=chosen_trial,
        hedges=hedges,
    )


def hedged_choice(trials: Sequence[Trial], *, seed: int = 0) -> tuple[Trial, str]:
    """A phase's choice among its trials, and why when it is not simply the best: the trial with the highest
    objective, unless validation asks two questions and other trials are not worse than it with confidence (the
    paired bootstrap of ``ranking.confidence`` over the users' balanced figures, ``ranking.metrics.balanced_per_user``).
    Then, among those tied, the one that gives up least on either question: the highest of each trial's smaller
    ratio of a question's NDCG@k to the best NDCG@k any tied trial reaches on that question.

    Why: the two questions can ask opposite things (recent anchors win "next" and lose "other"), and which one a
    shop's future asks is what validation cannot know (``bench/bench_questions.py``: on MovieLens 100K "next" orders
    the settings as a temporal test does, "other" as a random one). Between settings validation cannot tell apart
    on the balanced figure, the one that is nearest to the best on both is the safe bet; the best one by a noise's
    width can be far from the best on one of them."""
    best = max(trials, key=lambda t: t.served_ndcg)
    if len(trials) < 2 or not best.per_question:
        return best, ""
    mode = best.served_mode
    tied = [best]
    for trial in trials:
        if trial is best or trial.served_mode not in trial.per_question:
            continue
        per_user = metrics.balanced_per_user(
            {"best": best.per_question[mode], "other": trial.per_question[trial.served_mode]}
        )
        if not confidence.paired_bootstrap(per_user["best"], per_user["other"], seed=seed).confident:
            tied.append(trial)
    if len(tied) == 1:
        return best, ""
    questions = sorted(best.by_question[mode])
    means = {t.number: t.by_question[t.served_mode] for t in tied}
    top = {q: max(values[q] for values in means.values()) for q in questions}

    def worst_ratio(trial: Trial) -> float:
        return min(means[trial.number][q] / top[q] if top[q] > 0 else 1.0 for q in questions)

    # Ties on the worst ratio: the higher objective, then the best trial, then the earlier (max keeps the first).
    winner = max(tied, key=lambda t: (worst_ratio(t), t.served_ndcg))
    if winner is best:
        return best, ""
    return winner, (
        f"trial {winner.number} over trial {best.number}: tied on the balanced figure "
        f"({winner.served_ndcg:.4f} vs {best.served_ndcg:.4f}, not worse with confidence); its worse question is "
        f"{worst_ratio(winner):.0%} of the best against {worst_ratio(best):.0%} ("
        + " · ".join(f"{q} {means[winner.number][q]:.4f} vs {means[best.number][q]:.4f}" for q in questions)
        + ")"
    )


def _with_value(grid: Sequence[Any], value: Any) -> list[Any]:
    """The grid plus the current value (the first trial tries it), None first, the rest ascending."""
    values = list(dict.fromkeys([*grid, value]))
    return sorted(values, key=lambda v: (v is not None, v if v is not None else 0))


def _no_decay() -> dict[str, Any]:
    return {"half_life_days": None, "history_half_life_days": None, "popularity_half_life_days": None}


# --- What the version serves ----------------------------------------------------------------------------------


def serve_choice(
    per_user: Mapping[str, npt.ArrayLike], *, ranker_ships: bool, k: int, seed: int = 0
) -> tuple[str, str, dict[str, Any]]:
    """What the version serves, from the validation users' per-user NDCG@k (``per_user["pipeline"]``: the blended
    pipeline; the other keys: each servable source alone, all under the same category cap).

    A ranker that ships has already beaten the blend and the best servable single source with confidence on the
    users it never saw: the pipeline serves. Else the best single source (by its mean) served alone through the
    same re-ranker when the blended pipeline scores below it (never worse than its best part); when the pipeline
    is at least as good but not better with confidence (paired bootstrap over the users, ``ranking.confidence``),
    the simpler choice, that source, serves only if validation can tell it is the best single source (better with
    confidence than the runner-up): between tied sources it is picked on noise, and on a protocol the validation
    does not ask (MovieLens' random split) tied sources differed by 0.18 NDCG@10, so the blend of them serves.
    When validation asks two questions the per-user figures are ``ranking.metrics.balanced_per_user``'s, so the
    choice weighs them as the search did. Returns the choice, a sentence saying why and the comparison's figures."""
    if ranker_ships:
        why = "the LambdaMART ranker ships: it beat the blend and the best single source with confidence on validation"
        return PIPELINE, why, {}
    pipeline = np.asarray(per_user.get(PIPELINE, ()), np.float64)
    singles = {name: np.asarray(v, np.float64) for name, v in per_user.items() if name != PIPELINE}
    mean = float(np.nanmean(pipeline)) if np.isfinite(pipeline).any() else 0.0
    if not singles:
        return PIPELINE, f"the blended pipeline (NDCG@{k} {mean:.4f}); no single source to compare", {}
    means = {name: float(np.nanmean(v)) if np.isfinite(v).any() else 0.0 for name, v in singles.items()}
    ranked = sorted(means, key=means.__getitem__, reverse=True)
    best = ranked[0]
    comparison = confidence.paired_bootstrap(pipeline, singles[best], seed=seed)
    figures: dict[str, Any] = {"against": best, **comparison.to_dict()}
    said = comparison.describe("blended pipeline", f"{best} alone", f"NDCG@{k}")
    if comparison.confident:
        return PIPELINE, f"{said}: the pipeline serves", figures
    source = (
        SOURCE_PREFIX + best,
        f"{said}: the simpler choice serves, {best} alone through the same re-ranker (30% category cap)",
        figures,
    )
    if comparison.difference < 0 or len(ranked) == 1:
        return source
    runner_up = ranked[1]
    separation = confidence.paired_bootstrap(singles[best], singles[runner_up], seed=seed)
    figures["best_source_vs_runner_up"] = {"runner_up": runner_up, **separation.to_dict()}
    if separation.confident:
        return source
    tied = separation.describe(f"{best} alone", f"{runner_up} alone", f"NDCG@{k}")
    return (
        PIPELINE,
        f"{said}, and {tied}: between tied sources the blend of them serves, not one picked on noise",
        figures,
    )


def ranker_beats_blend(validation: Mapping[str, Any], *, k: int) -> tuple[bool, str]:
    """Whether the capped ranker pipeline scores at least the capped blend on the validation users the ranker never
    saw (the blend is one of the version's parts too: a ranker below it must not ship): cross-fitted, the means of
    the comparison the ship rule made over every user, each scored by a ranker that never saw them."""
    ranker_info = validation.get("ranker", {})
    crossed = (
        ranker_info.get("confidence", {}).get(BLEND_ROW) if ranker_info.get("judged_on") == "cross_fitted" else None
    )
    if crossed is not None:
        ranker, blend, users = crossed["mean_a"], crossed["mean_b"], crossed["users"]
        verdict = ranker >= blend
        scale = " (balanced over validation's two questions)" if ranker_info.get("balanced") else ""
        return verdict, (
            f"ranker NDCG@{k}{scale} {ranker:.4f} vs blend {blend:.4f} on {users} users, each scored by a ranker that "
            "never saw them"
        )
    segments = validation.get("segments", {})
    rows = segments.get(UNSEEN_SEGMENT, segments.get("main", {})).get("sources", {})
    key = f"ndcg@{k}"
    ranker, blend = rows.get(RANKER_ROW, {}).get(key), rows.get(BLEND_ROW, {}).get(key)
    if ranker is None or blend is None:
        return True, "no blend figure to compare"
    verdict = ranker >= blend
    return verdict, f"ranker NDCG@{k} {ranker:.4f} vs blend {blend:.4f} on the users the ranker never saw"


def evaluate_choice(
    split: evaluation.Split, items: ItemTable, params: TrainParams, vectors: npt.NDArray[np.float32]
) -> tuple[float, dict[str, float], dict[str, npt.NDArray[np.float64]]]:
    """The objective's figures for one set of values (what the guard compares when no search ran)."""
    return score_params(_SourceCache(split.sample_users(params.tune_max_users, params.seed), items, vectors), params)


def trials_table(trials: Sequence[Mapping[str, Any]], *, limit: int | None = None) -> str:
    """The trials as a plain-text table, best first (train's output)."""
    rows = sorted(trials, key=lambda t: -t["served_ndcg"])[:limit] if limit else list(trials)
    lines = [f"{'trial':>5}  {'phase':<7}  {'pipeline':>8}  {'best single source':<20}  params"]
    for t in rows:
        source = f"{t['best_source']} {t['best_source_ndcg']:.4f}" if t.get("best_source") else "-"
        params = ", ".join(f"{name}={value}" for name, value in t["params"].items())
        lines.append(f"{t['trial']:>5}  {t['phase']:<7}  {t['ndcg']:>8.4f}  {source:<20}  {params}")
    return "\n".join(lines)
