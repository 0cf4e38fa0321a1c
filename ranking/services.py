"""Model use cases: train a version (with its validation), decide its promotion, activate it, rebuild its ANN
index, refresh its popularity/trending, evaluate protocols, prune old artifacts.

Numeric work happens in the pure modules (``ranking.training``, ``ranking.sources``, ``ranking.ann``,
``ranking.evaluation``); this module reads the database, writes the registry and publishes the Redis marker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from experiments import selectors as experiments_selectors
from experiments.config import VariantConfig
from kernel import redis_client
from ranking import ann, artifact_store, artifacts, evaluation, selectors, tuning
from ranking.dataset import InteractionLog, ItemTable, log_from_arrays
from ranking.models import ModelVersion
from ranking.pipeline import booster_from_array, booster_to_array, evaluate_with_pipeline
from ranking.pipeline.offline import config_label, served_recommender
from ranking.selectors import dataset_load
from ranking.training import SOURCE_NAMES, StageTimer, TrainedSources, TrainParams, content_vectors, train_sources

logger = logging.getLogger(__name__)

TRAIN_LOCK_KEY = "lock:ranking:train"
TRAIN_LOCK_SECONDS = 600  # a run that stops renewing its lock (it died) frees it after this long
TRAIN_LOCK_HEARTBEAT_SECONDS = 60
TRENDING_TTL_SECONDS = 3 * 3600  # a refresh older than this is ignored; serving falls back to the trained arrays
KEEP_RETIRED_ARTIFACTS = 3
STALE_DIRECTORY_SECONDS = 24 * 3600


class TrainingError(Exception):
    """Training cannot run (no data, bad window); the message says what to do."""


class TrainingBusy(TrainingError):
    """Another training holds the lock."""


@dataclass
class TrainResult:
    version: ModelVersion
    timings: dict[str, float]
    validation: dict[str, Any] | None
    ann_report: ann.AnnReport | None
    activated: bool
    extra: dict[str, Any] = field(default_factory=dict)


# --- Training -------------------------------------------------------------------------------------------------


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


# --- Registry -------------------------------------------------------------------------------------------------


def _publish_marker(version_id: int, checksum: str) -> None:
    """Tell every serving process which version to serve. Best effort: if Redis is down, loaders fall back to the
    database (and check it once a minute regardless), so a lost publish delays the swap, never breaks serving."""
    try:
        pipe = redis_client.atomic(artifacts.ACTIVE_KEY)  # the marker's keys share the tag {model}
        pipe.set(artifacts.ACTIVE_KEY, version_id)
        pipe.set(artifacts.ACTIVE_CHECKSUM_KEY, checksum)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("model_marker_publish_failed", extra={"version_id": version_id, "error": str(exc)})


@transaction.atomic
def model_version_activate(
    *, version_id: int, decision: str = ModelVersion.Decision.MANUAL, note: str = ""
) -> ModelVersion:
    """Make ``version_id`` the one active version: retire the current one and activate this one in a single
    transaction (rows locked with SELECT ... FOR UPDATE), then publish the Redis marker after commit.

    Activations take turns (a transaction-level advisory lock, taken first): row locks alone let a second one,
    waiting on the active row, find it retired once the first committed and save a second active row, which the
    partial unique index refused with an IntegrityError (an admin 500; found by a sixth tester, 5 December). The
    artifacts are verified first: activating a version whose files are gone would only make every loader refuse it.
    """
    _take_activation_turn()
    version = ModelVersion.objects.select_for_update().get(id=version_id)
    location = selectors.version_location(version_id=version.id)
    if version.status == ModelVersion.Status.FAILED or not version.checksum or location is None:
        raise ValueError(f"version {version.name} has no usable artifacts (status {version.status})")
    try:
        artifacts.version_verify(location.path, location.checksum)
    except artifacts.ArtifactError as exc:
        raise ValueError(f"version {version.name} cannot be activated: {exc}") from exc
    current = ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.ACTIVE).first()
    if current is not None and current.id != version.id:
        current.status = ModelVersion.Status.RETIRED
        current.save(update_fields=["status"])
    version.status = ModelVersion.Status.ACTIVE
    version.activated_at = timezone.now()
    version.decision = decision
    if note:
        version.notes = f"{version.notes}\n{note}".strip()
    version.save(update_fields=["status", "activated_at", "decision", "notes"])
    version_id, checksum = version.id, version.checksum
    transaction.on_commit(lambda: _publish_marker(version_id, checksum))
    logger.info(
        "model_version_activated",
        extra={"version_id": version.id, "retired_version_id": current.id if current else None, "decision": decision},
    )
    return version


def _take_activation_turn() -> None:
    """The transaction-level advisory lock activations (and promotions) take turns on, always before any model
    version row: taken again later in the same transaction it does not block."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["ranking:model-activation"])


def promotion_decision(
    *, candidate_ndcg: float | None, active_ndcg: float | None, has_active: bool, tolerance: float, force: bool
) -> str:
    """The promotion rule: a candidate is promoted unless its validation NDCG is worse than the active version's
    by more than ``tolerance`` (absolute); ``force`` overrides, and the first version is always activated."""
    if force:
        return ModelVersion.Decision.FORCED
    if not has_active:
        return ModelVersion.Decision.FIRST
    if candidate_ndcg is None:
        return ModelVersion.Decision.REJECTED
    if active_ndcg is None or candidate_ndcg >= active_ndcg - tolerance:
        return ModelVersion.Decision.PROMOTED
    return ModelVersion.Decision.REJECTED


def model_version_promote(
    *, version_id: int, force: bool = False, tolerance: float = 0.005, activate: bool = True
) -> ModelVersion:
    """Apply :func:`promotion_decision` to a candidate, record the decision and both figures on it, and activate
    it when the decision says so (and ``activate``)."""
    with transaction.atomic():
        # The activation's turn before the candidate's row, as model_version_activate takes them: the other order
        # deadlocked with an admin activating the same candidate meanwhile.
        _take_activation_turn()
        version = ModelVersion.objects.select_for_update().get(id=version_id)
        if version.status == ModelVersion.Status.ACTIVE:  # activated meanwhile (the admin): its decision stands
            return version
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exclude(id=version.id).first()
        candidate_ndcg = version.validation_ndcg
        active_ndcg = active.validation_ndcg if active else None
        decision = promotion_decision(
            candidate_ndcg=candidate_ndcg,
            active_ndcg=active_ndcg,
            has_active=active is not None,
            tolerance=tolerance,
            force=force,
        )
        source = version.metrics.get("validation_source", "?")
        note = (
            f"{decision}: validation ndcg ({source}) {_fmt(candidate_ndcg)} vs active "
            f"{active.name if active else '-'} {_fmt(active_ndcg)}, tolerance {tolerance}"
        )
        if candidate_ndcg is None and decision == ModelVersion.Decision.REJECTED:
            # Nothing to compare: training held out no validation (too few users or days in its window).
            note += "; the candidate has no validation figure to compare (train on a longer window, or --force)"
        version.metrics = {
            **version.metrics,
            "promotion": {
                "decision": decision,
                "candidate_ndcg": candidate_ndcg,
                "active_ndcg": active_ndcg,
                "active_version_id": active.id if active else None,
                "tolerance": tolerance,
            },
        }
        version.decision = decision
        version.notes = f"{version.notes}\n{note}".strip()
        version.save(update_fields=["metrics", "decision", "notes"])
        if activate and decision != ModelVersion.Decision.REJECTED:
            version = model_version_activate(version_id=version.id, decision=decision)
    return version


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# --- Re-indexing ----------------------------------------------------------------------------------------------


def model_reindex(*, kind: str = "auto", version_id: int | None = None) -> tuple[ModelVersion, ann.AnnReport]:
    """Rebuild the faiss index of the active version (or ``version_id``) with ``kind`` (auto: flat for small
    catalogs, HNSW above), tuned to the version's recall target, into a new directory that shares the arrays by
    hard links; the registry row then points at it and serving hot-swaps (the checksum changed)."""
    ann.choose_kind(0, kind)  # validate the kind before any work
    row = selectors.active_version() if version_id is None else ModelVersion.objects.filter(id=version_id).first()
    if row is None:
        raise TrainingError(
            "no model version to re-index (train one first)" if version_id is None else "no such version"
        )
    location = selectors.version_location(version_id=row.id)
    assert location is not None
    meta = artifacts.version_verify(location.path, location.checksum)
    params = TrainParams.from_dict(meta.get("params", {}))
    item_factors = np.load(location.path / "als_item_factors.npy", mmap_mode="r")
    user_factors = np.load(location.path / "als_user_factors.npy", mmap_mode="r")
    index, report = _build_ann(item_factors, user_factors, params, kind=kind)
    name = f"{row.name}-r{timezone.now():%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
    path, checksum = artifacts.version_reindex_copy(
        location.path, name, index=index, meta_updates={"ann": report.to_dict()}
    )
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(id=row.id)
        version.artifact_path = str(path)
        version.checksum = checksum
        version.ann_kind = report.kind
        version.ann_recall = report.recall
        note = f"re-indexed: {report.kind} {report.params}, recall@{report.recall_k} {_fmt(report.recall)}"
        version.notes = f"{version.notes}\n{note}".strip()
        version.save(update_fields=["artifact_path", "checksum", "ann_kind", "ann_recall", "notes"])
        if version.status == ModelVersion.Status.ACTIVE:
            version_id_, checksum_ = version.id, checksum
            transaction.on_commit(lambda: _publish_marker(version_id_, checksum_))
    logger.info(
        "model_version_reindexed", extra={"version_id": version.id, "kind": report.kind, "recall": report.recall}
    )
    return version, report


# --- Hourly popularity / trending refresh ---------------------------------------------------------------------


def trending_refresh(*, now: datetime | None = None) -> dict[str, Any] | None:
    """Recompute the active version's popularity and trending arrays from recent Postgres data and store them in
    Redis (``model:<id>:trending``, expiring after 3 h) with a stamp that makes every loader pick them up.

    "Now" is the reference time (:meth:`InteractionLog.reference_ts`) of the events since the version's own
    reference minus the trending window: the current time on a live stream, the data's end on a frozen one (the
    demo data ends in 2011, a few demo clicks cannot move it). Items added after training are not in the
    version's map and are skipped. Returns a summary, or None when no version is active.
    """
    row = selectors.active_version()
    if row is None:
        return None
    location = selectors.version_location(version_id=row.id)
    assert location is not None
    meta = artifacts.version_read_meta(location.path)
    params = TrainParams.from_dict(meta.get("params", {}))
    now = now or timezone.now()
    window = timedelta(days=params.trending_recent_days + params.trending_baseline_days)
    trained_reference = meta.get("data", {}).get("reference_ts")
    since = (datetime.fromtimestamp(trained_reference, tz=UTC) if trained_reference else now) - window
    item_ids = np.load(location.path / "item_ids.npy", mmap_mode="r")
    items = ItemTable(
        item_ids=np.asarray(item_ids), category=np.zeros(item_ids.size, np.int32), texts=[""] * item_ids.size
    )
    columns = selectors.interaction_columns(since=since, until=now + timedelta(seconds=1))
    log = log_from_arrays(
        customer=columns["customer"],
        item=columns["item"],
        type_=columns["type"],
        value=columns["value"],
        ts=columns["ts"],
        session=None,
        items=items,
    )
    reference = datetime.fromtimestamp(log.reference_ts(), tz=UTC) if len(log) else now
    trained = train_sources(log, items, params, reference_ts=reference.timestamp(), include=("popularity", "trending"))
    computed_at = time.time()
    key = artifacts.TRENDING_KEY.format(version_id=row.id)
    pipe = redis_client.atomic(key)  # the trending keys share the tag {model}
    pipe.delete(key)
    pipe.hset(
        key, mapping=artifacts.trending_encode(trained.arrays["popularity"], trained.arrays["trending"], computed_at)
    )
    pipe.expire(key, TRENDING_TTL_SECONDS)
    pipe.set(artifacts.TRENDING_STAMP_KEY, f"{row.id}:{computed_at:.3f}", ex=TRENDING_TTL_SECONDS)
    pipe.execute()
    summary = {
        "version_id": row.id,
        "reference": reference.isoformat(),
        "events": len(log),
        "trending_items": int((trained.arrays["trending"] > 1.0).sum()),
    }
    logger.info("trending_refreshed", extra=summary)
    return summary


# --- Evaluation -----------------------------------------------------------------------------------------------


def model_evaluate(
    *,
    protocol: str,
    params: TrainParams | None = None,
    k: int = 10,
    holdout_days: float | None = None,
    fraction: float | None = None,
    seed: int = 42,
    test_file: str | Path | None = None,
    include: Sequence[str] = SOURCE_NAMES,
    timer: StageTimer | None = None,
    pipeline: bool = True,
    surface: str = "home",
    surface_config: VariantConfig | None = None,
) -> dict[str, Any]:
    """Run an offline protocol on the database's interactions: ``temporal`` (``holdout_days``), ``per_user``
    (``fraction``, ``seed``) or ``test_file`` (train on everything, test on a CSV in the generic import format).
    Every source is trained on the protocol's training part with the same code the product trains with.

    The "served" row (the version as it serves) re-ranks with ``surface_config``, what ``surface`` serves outside
    experiments (``experiments.services.surface_default_get``; the platform defaults when None); ``result["served"]``
    says which row and config that was. The pipeline rows keep the platform defaults their names state."""
    params = params or TrainParams()
    served_config = surface_config or VariantConfig()
    timer = timer or StageTimer(enabled=False)
    with timer.stage("load"):
        log, items = dataset_load()
    if len(log) == 0:
        raise TrainingError("there are no interactions to evaluate on")
    with timer.stage("split"):
        if protocol == "temporal":
            split = evaluation.split_temporal(log, holdout_days=float(holdout_days or 30))
        elif protocol == "per_user":
            split = evaluation.split_per_user(log, fraction=float(fraction or 0.25), seed=seed)
        elif protocol == "test_file":
            if test_file is None:
                raise TrainingError("the test_file protocol needs a CSV file")
            split = _split_from_file(log, items, Path(test_file))
        else:
            raise TrainingError(f"unknown protocol {protocol!r}")
    if split.n_test_users == 0:
        raise TrainingError("the split has no test user with a new relevant item; nothing to evaluate")
    if len(split.train) == 0:
        # Every event falls in the held-out window (a log of a few days, or every event at one time): sources
        # trained on nothing would print a table of zeros (found by a seventh tester, 6 December).
        raise TrainingError(
            "the split leaves no training events: every event is in the held-out part (the temporal split holds out "
            "the last --holdout-days of the log; with a log this short use --per-user-fraction 0.25)"
        )
    with timer.stage("train"):
        trained = train_sources(
            split.train, items, params, reference_ts=split.reference_ts, include=include, content_neighbours=False
        )
    with timer.stage("evaluate"):
        if pipeline:
            # Every test user; a ranker fitted on part of them is also reported on the others (ranker_unseen).
            result = evaluate_with_pipeline(split, trained, items, k=k, seed=seed).result
            # The row to compare with the API: the version's serve mode, with its shipped ranker when it has one.
            shipped = _active_ranker() if protocol == "test_file" and params.serve == tuning.PIPELINE else None
            served_row = None
            if params.serve.startswith(tuning.SOURCE_PREFIX) or shipped is not None:
                served_row = (
                    f"served ({params.serve}{', shipped ranker' if shipped is not None else ''}, {surface} default, "
                    f"{config_label(served_config)})"
                )
                recommender = served_recommender(
                    trained, split, items, ranker=shipped, serve=params.serve, config=served_config
                )
                served = evaluation.evaluate_sources(
                    split, {served_row: recommender}, evaluation.eval_users(split, params), k=k,
                    item_category=items.category,
                )  # fmt: skip
                for segment, entry in served["segments"].items():
                    if segment in result["segments"]:
                        result["segments"][segment]["sources"].update(entry["sources"])
            result["served"] = {"row": served_row, "surface": surface, "config": served_config.to_dict()}
        else:
            result = evaluation.run_protocol(split, trained, k=k, item_category=items.category, include=include)
    result["params"] = params.to_dict()
    result["timings"] = dict(timer.timings)
    result["sizes"] = trained.info["sizes"]
    return result


def _active_ranker() -> Any:
    """The active version's shipped LambdaMART ranker (a LightGBM booster), or None."""
    row = selectors.active_version()
    location = selectors.version_location(version_id=row.id) if row is not None else None
    if location is None or not (location.path / "ranker_model.npy").exists():
        return None
    return booster_from_array(np.load(location.path / "ranker_model.npy"))


def active_version_params() -> TrainParams | None:
    """The parameters the active version was trained with (its tuned values and serve mode), or None."""
    row = selectors.active_version()
    return TrainParams.from_dict(row.parameters) if row is not None and row.parameters else None


def _split_from_file(log: InteractionLog, items: ItemTable, path: Path) -> evaluation.Split:
    """Test events from a CSV in the generic import format; items unknown to the catalog are dropped and
    counted, customers unknown to the database are new users (no history)."""
    from events.importers import GENERIC_OPTIONAL, GENERIC_REQUIRED, generic_adapter
    from events.parsing import InvalidEvent, utcnow
    from kernel.csvimport import CsvSource, ErrorLog, ImportAborted, ImportSummary

    customers: list[str] = []
    item_keys: list[str] = []
    summary = ImportSummary(path=str(path))
    try:
        with CsvSource(path, required=GENERIC_REQUIRED, optional=GENERIC_OPTIONAL) as source:
            adapt = generic_adapter(source.index, utcnow())
            errors = ErrorLog(summary, None)
            for line, cells in source.rows(errors):
                try:
                    _, customer, _, item, _, _, _ = adapt(cells)
                except InvalidEvent as exc:
                    errors.add(line, str(exc))
                    continue
                customers.append(customer)
                item_keys.append(item)
    except ImportAborted as exc:
        raise TrainingError(str(exc)) from exc
    item_pk = selectors.item_pks_by_external_id(item_keys)
    customer_pk = selectors.customer_pks_by_external_id(customers)
    # Customers the database does not know get distinct negative keys: new users without history.
    unknown = {ext: -(n + 1) for n, ext in enumerate(sorted(set(customers) - set(customer_pk)))}
    keys = np.array([customer_pk.get(c, unknown.get(c, -1)) for c in customers], dtype=np.int64)
    idx = items.index_of(np.array([item_pk.get(i, -1) for i in item_keys], dtype=np.int64))
    known_item = idx >= 0
    info = {
        "test_file": str(path),
        "rows": summary.read if summary.read else len(customers),
        "rejected_rows": summary.rejected,
        "unknown_items": int((~known_item).sum()),
        "unknown_customers": len(unknown),
    }
    return evaluation.split_external(log, test_user_keys=keys[known_item], test_items=idx[known_item], info=info)


# --- Housekeeping ---------------------------------------------------------------------------------------------


def model_version_prune(*, keep_retired: int = KEEP_RETIRED_ARTIFACTS) -> list[str]:
    """Delete artifact directories nobody will load again: retired versions beyond the newest ``keep_retired``
    (kept for a quick rollback; a version an experiment's arm or a surface default names is kept too), and
    directories of this host's version directory no version names (superseded re-index copies, leftovers of
    crashed runs) once they are a day old. Returns the deleted paths.

    Local: the directory training writes into and serving maps from (``artifacts.local_root()``: the cache when
    the storage is remote), by directory name, never the compiled rankers' ``.compiled``. Remote: only retired
    versions beyond those kept, through the storage (``artifact_store.remove``). It looked in ``ARTIFACT_ROOT`` by
    resolved path: with a shared mount as the storage and a local cache, every version there looked unreferenced,
    the active one included (found by a sixth tester, 5 December)."""
    root = artifacts.local_root()
    pinned = experiments_selectors.pinned_model_versions()
    keep: set[str] = set()
    retired_beyond: list[str] = []
    retired_seen = 0
    for version_id, status, name, path in selectors.versions_with_artifacts():
        dir_name = Path(path).name if path else name
        if status == ModelVersion.Status.RETIRED and version_id not in pinned:
            retired_seen += 1
            if retired_seen > keep_retired:
                retired_beyond.append(dir_name)
                continue
        keep.add(dir_name)
    retired_beyond = [name for name in retired_beyond if name not in keep]  # a re-index copy shares no name
    for name in retired_beyond:
        try:
            artifact_store.remove(name)
        except artifacts.ArtifactError:
            logger.warning("model_artifacts_remove_failed", extra={"version": name}, exc_info=True)
    cutoff = time.time() - STALE_DIRECTORY_SECONDS
    compiled = Path(settings.COMPILED_RANKER_DIR).resolve() if settings.COMPILED_RANKER_DIR else None
    candidates = {root / name for name in retired_beyond}
    if root.exists():
        candidates |= {
            child for child in root.iterdir()
            if child.is_dir() and child.name not in keep and child.resolve() != compiled
            and child.stat().st_mtime < cutoff
        }  # fmt: skip
    deleted = []
    for directory in sorted(candidates):
        if directory.exists() and directory.parent.resolve() == root.resolve():
            shutil.rmtree(directory, ignore_errors=True)
            deleted.append(str(directory))
    if deleted:
        logger.info("model_artifacts_pruned", extra={"deleted": deleted})
    return deleted
