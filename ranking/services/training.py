"""Training a version: the training lock, the window, :func:`version_build` (content vectors, tuning, validation,
the serve choice, the final training and the ANN index), :func:`version_meta`, and :func:`model_train`, which
writes, registers and promotes it."""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.utils import timezone

from kernel import redis_client
from ranking import ann, artifacts, evaluation, selectors, tuning
from ranking.dataset import InteractionLog, ItemTable
from ranking.models import ModelVersion
from ranking.pipeline import booster_to_array, evaluate_with_pipeline
from ranking.selectors import dataset_load
from ranking.services.errors import TrainingBusy, TrainingError
from ranking.services.housekeeping import model_version_prune
from ranking.services.registry import model_version_promote
from ranking.training import StageTimer, TrainedSources, TrainParams, content_vectors, train_sources

# The logger keeps the name it had before ranking/services.py became a package (log filters, dashboards).
logger = logging.getLogger("ranking.services")

TRAIN_LOCK_KEY = "lock:ranking:train"
TRAIN_LOCK_SECONDS = 600  # a run that stops renewing its lock (it died) frees it after this long
TRAIN_LOCK_HEARTBEAT_SECONDS = 60


@dataclass
class TrainResult:
    version: ModelVersion
    timings: dict[str, float]
    validation: dict[str, Any] | None
    ann_report: ann.AnnReport | None
    activated: bool
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _training_lock() -> Iterator[None]:
    """Held for the whole run and kept alive by a heartbeat: a run that dies (killed worker, Ctrl-C'd command) frees
    the lock within ``TRAIN_LOCK_SECONDS`` instead of blocking every training for hours."""
    with redis_client.kept_lock(
        TRAIN_LOCK_KEY, seconds=TRAIN_LOCK_SECONDS, heartbeat=TRAIN_LOCK_HEARTBEAT_SECONDS
    ) as held:
        if not held:
            # Say how long a holder that died (a killed worker or command) can refuse trainings: told "another
            # training is running" while nothing ran, an operator could not know what to wait for (a ninth tester,
            # 6 December).
            raise TrainingBusy(
                f"another training is running (Redis lock {TRAIN_LOCK_KEY}; one that died frees it within "
                f"{_duration(TRAIN_LOCK_SECONDS)}); try again when it finishes"
            )
        yield


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} s"


def _window(
    since: datetime | None, until: datetime | None, days: float | None
) -> tuple[datetime | None, datetime | None]:
    first, last = selectors.interaction_time_range()
    if last is None:
        raise TrainingError("there are no interactions to train on (import events or run manage.py load_demo)")
    # The window's end defaults to just after the latest event, so "now" is the data's now (the demo ends in 2011).
    until = until or (last + timedelta(seconds=1))
    if days is not None:
        if not math.isfinite(days) or days <= 0:
            raise TrainingError("--days must be a positive number")
        try:
            since = until - timedelta(days=days)
        except (OverflowError, ValueError):  # further back than a date can be: the whole history
            since = None
    if since is not None and since >= until:
        raise TrainingError(f"empty training window: {since.isoformat()} is not before {until.isoformat()}")
    return since, until


def _version_name(now: datetime) -> str:
    return f"v{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def model_train(
    *,
    params: TrainParams | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    days: float | None = None,
    force: bool = False,
    activate: bool = True,
    timer: StageTimer | None = None,
    on_event: Callable[[str, Any], None] | None = None,
) -> TrainResult:
    """Train every source on the interactions of the window, tune and validate (see :func:`version_build`), write the
    artifacts, register a ``ModelVersion`` and (when ``activate``) promote it if validation allows or ``force``.

    Holds the training lock for the whole run (raises :class:`TrainingBusy` when another run holds it). A failure
    after loading records a ``failed`` version with the error in its notes, then re-raises.
    """
    params = params or TrainParams()
    timer = timer or StageTimer(enabled=False)
    with _training_lock():
        since, until = _window(since, until, days)
        with timer.stage("load"):
            log, items = dataset_load(since=since, until=until)
        if len(log) == 0 or log.n_users == 0:
            raise TrainingError("no usable interactions in the window (none, or only from opted-out customers)")
        first_ts, last_ts = log.time_range()
        data_from = datetime.fromtimestamp(first_ts, tz=UTC)
        data_to = datetime.fromtimestamp(last_ts, tz=UTC)
        try:
            return _train_and_register(log, items, params, data_from, data_to, force, activate, timer, on_event)
        except Exception as exc:
            ModelVersion.objects.create(
                name=_version_name(timezone.now()),
                data_from=data_from,
                data_to=data_to,
                parameters=params.to_dict(),
                status=ModelVersion.Status.FAILED,
                notes=f"training failed: {type(exc).__name__}: {exc}",
            )
            logger.exception("model_training_failed")
            raise


@dataclass
class VersionBuild:
    """Everything a version is made of, before it is written and registered."""

    trained: TrainedSources
    validation: dict[str, Any] | None
    index: Any
    ann_report: ann.AnnReport
    plan: tuning.ValidationPlan | None = None
    tuned: tuning.TuningResult | None = None
    serve: str = tuning.PIPELINE
    serve_reason: str = ""


def version_build(
    log: InteractionLog,
    items: ItemTable,
    params: TrainParams,
    timer: StageTimer,
    *,
    on_event: Callable[[str, Any], None] | None = None,
) -> VersionBuild:
    """Content vectors (once), the validation protocol the data supports, the tuning of the parameters on it
    (within ``params.tune_budget_seconds``), the validation run with the chosen values (ranker fit and ship
    decision), what to serve (never worse than the best single source), the final training and the tuned ANN index.
    No database: the training benchmark runs exactly this on in-memory data. ``on_event(kind, payload)`` hears
    the plan ("plan"), each trial ("trial") and the serve choice ("serve") as they happen."""
    notify = on_event or (lambda kind, payload: None)
    with timer.stage("content_vectors"):
        vectors = content_vectors(items, params)
    with timer.stage("validation_split"):
        plan, split = tuning.validation_plan(log, params)
    notify("plan", plan)
    tuned: tuning.TuningResult | None = None
    if split is not None and params.tune_budget_seconds > 0:
        with timer.stage("tuning"):
            tuned = tuning.tune(
                split, items, params, vectors, budget_seconds=params.tune_budget_seconds,
                max_trials=params.tune_max_trials, on_trial=lambda trial: notify("trial", trial),
            )  # fmt: skip
        params = tuned.params
    validation, ranker = _validate(split, items, params, vectors, timer)
    if validation is not None and validation["ranker"].get("confidence_reason"):
        notify("ranker", f"the ranker {'ships' if ranker is not None else 'does not ship'}: "
               f"{validation['ranker']['confidence_reason']}")  # fmt: skip
    if validation is not None and ranker is not None and params.ranker_ship == "auto":
        beats, why = tuning.ranker_beats_blend(validation, k=params.k)
        validation["ranker"]["beats_blend"] = why
        if not beats:
            # Never worse than its parts: the blend of the same candidates is one of them.
            ranker = None
            validation["ranker"]["ships"] = False
            notify("ranker", f"the ranker does not ship: {why}")
    figures: tuple[float, dict[str, float], dict[str, Any]] | None = None
    serve_confidence: dict[str, Any] = {}
    if params.serve != "auto":
        serve, serve_reason = params.serve, "set by hand (serve parameter)"
    elif validation is None or split is None:
        serve, serve_reason = tuning.PIPELINE, "no validation: the pipeline by default"
    else:
        best = tuned.best if tuned is not None else None
        if best is not None and best.per_user:
            figures = (best.ndcg, best.singles, best.per_user)
        else:
            with timer.stage("validation_guard"):
                figures = tuning.evaluate_choice(split, items, params, vectors)
        serve, serve_reason, serve_confidence = tuning.serve_choice(
            figures[2], ranker_ships=ranker is not None, k=params.k, seed=params.seed
        )
    notify("serve", (serve, serve_reason))
    params = params.replace(serve=serve)
    if validation is not None:
        validation["protocol"] = plan.to_dict()
        validation["serve"] = {
            "choice": serve,
            "reason": serve_reason,
            "pipeline_ndcg": figures[0] if figures else None,
            "single_sources_ndcg": figures[1] if figures else None,
            "confidence": serve_confidence,
            "users": split.n_test_users if split is not None else 0,
        }
        if tuned is not None:
            validation["tuning"] = tuned.to_dict()
    trained = train_sources(log, items, params, timer=timer, content=vectors)
    if ranker is not None:
        # The LambdaMART ranker learnt on the validation split's sources scores the final sources' candidates:
        # its features (per-source ranks, popularity, affinities) keep their meaning from one training to the next.
        trained.arrays["ranker_model"] = booster_to_array(ranker)
    with timer.stage("ann"):
        index, report = _build_ann(
            trained.arrays["als_item_factors"], trained.arrays["als_user_factors"], params, kind=params.ann_kind
        )
    return VersionBuild(
        trained=trained, validation=validation, index=index, ann_report=report, plan=plan, tuned=tuned,
        serve=serve, serve_reason=serve_reason,
    )  # fmt: skip


def version_meta(build: VersionBuild, *, name: str, created_at: datetime) -> dict[str, Any]:
    """meta.json's content (the files and checksums are added by the writer)."""
    trained, params = build.trained, build.trained.params
    first, last = trained.info["time_range"]
    metrics: dict[str, Any] = {}
    if build.validation is not None:
        metrics["validation"] = build.validation
        primary = build.validation["segments"]["main"]["sources"].get(params.promotion_source, {})
        metrics["validation_ndcg"] = primary.get(f"ndcg@{params.k}")
        metrics["validation_source"] = params.promotion_source
    return {
        "version": name,
        "created_at": created_at.isoformat(),
        "data": {
            "from": datetime.fromtimestamp(first, tz=UTC).isoformat(),
            "to": datetime.fromtimestamp(last, tz=UTC).isoformat(),
            "reference_ts": trained.reference_ts,
        },
        "params": params.to_dict(),
        "serve": params.serve,
        "validation_protocol": build.plan.to_dict() if build.plan is not None else None,
        "sizes": trained.info["sizes"],
        "skipped": trained.info["skipped"],
        "metrics": metrics,
        "ann": build.ann_report.to_dict(),
    }


def _train_and_register(
    log: InteractionLog,
    items: ItemTable,
    params: TrainParams,
    data_from: datetime,
    data_to: datetime,
    force: bool,
    activate: bool,
    timer: StageTimer,
    on_event: Callable[[str, Any], None] | None = None,
) -> TrainResult:
    build = version_build(log, items, params, timer, on_event=on_event)
    now = timezone.now()
    name = _version_name(now)
    meta = version_meta(build, name=name, created_at=now)
    with timer.stage("write"):
        path, checksum = artifacts.version_write(
            artifacts.local_root(), name, build.trained.arrays, index=build.index, meta=meta
        )
    report = build.ann_report
    version = ModelVersion.objects.create(
        name=name,
        created_at=now,
        data_from=data_from,
        data_to=data_to,
        parameters=build.trained.params.to_dict(),
        sizes=build.trained.info["sizes"],
        metrics=meta["metrics"],
        status=ModelVersion.Status.CANDIDATE,
        checksum=checksum,
        artifact_path=str(path),
        ann_kind=report.kind,
        ann_recall=report.recall,
    )
    logger.info("model_version_trained", extra={"version_id": version.id, "version": name, "checksum": checksum})
    version = model_version_promote(
        version_id=version.id, force=force, tolerance=params.promotion_tolerance, activate=activate
    )
    with contextlib.suppress(OSError):
        model_version_prune()
    return TrainResult(
        version=version,
        timings=dict(timer.timings),
        validation=build.validation,
        ann_report=report,
        activated=version.status == ModelVersion.Status.ACTIVE,
    )


def _validate(
    split: evaluation.Split | None, items: ItemTable, params: TrainParams, vectors: np.ndarray, timer: StageTimer
) -> tuple[dict[str, Any] | None, Any]:
    """On the validation split (see :func:`ranking.tuning.validation_plan`): train on its training part, fit the
    LambdaMART ranker on part of its users and score every source and the full pipeline on the others. Returns
    the figures and the ranker when it beats the best single source (else None: serving then uses the blend)."""
    if split is None:
        return None, None
    with timer.stage("validation_train"):
        trained = train_sources(
            split.train, items, params, reference_ts=split.reference_ts, content=vectors, content_neighbours=False
        )
    with timer.stage("validation_eval"):
        outcome = evaluate_with_pipeline(split, trained, items, k=params.k, ship=params.ranker_ship)
    return outcome.result, outcome.booster


def _build_ann(
    item_factors: np.ndarray, user_factors: np.ndarray, params: TrainParams, *, kind: str
) -> tuple[Any, ann.AnnReport]:
    index, report = ann.build_tuned(
        item_factors,
        kind=kind,
        queries=user_factors,
        target=params.ann_recall_target,
        seed=params.seed,
        flat_max_items=params.ann_flat_max_items,
    )
    if report.recall is not None and report.recall < params.ann_recall_target:
        # Only reachable with a capped knob on odd data; recorded on the version, and loud in the logs.
        logger.warning("ann_recall_below_target", extra={"kind": report.kind, "recall": report.recall})
    return index, report
