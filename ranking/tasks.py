"""Celery tasks of the ranking app: nightly training (queue ``training``), re-indexing (queue ``indexing``) and
the hourly popularity/trending refresh. Thin and idempotent: each calls one service."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import shared_task
from django.db import InterfaceError, OperationalError

from ranking import services
from ranking.training import TrainParams

logger = logging.getLogger(__name__)

# Connection trouble is worth a retry; anything else (bad data, a bug) would only fail again.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)


@shared_task(
    name="ranking.tasks.train_model",
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=60,
    retry_backoff_max=900,
    retry_jitter=True,
    max_retries=3,
    soft_time_limit=3 * 3600,
    time_limit=3 * 3600 + 600,
)
def train_model(force: bool = False, days: float | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, validate, register and (per the promotion rule) activate a model version.

    Idempotent under redelivery: the service holds a Redis lock for the whole run, so a second delivery while the
    first still runs returns "skipped"; a run after it completes simply trains a newer version.
    """
    train_params = TrainParams.from_dict(params) if params else TrainParams()
    try:
        result = services.model_train(params=train_params, days=days, force=force)
    except services.TrainingBusy as exc:
        logger.info("model_training_skipped", extra={"reason": str(exc)})
        return {"skipped": str(exc)}
    except services.TrainingError as exc:
        # No data yet is a normal state of a fresh install, not a failure to retry.
        logger.warning("model_training_not_possible", extra={"reason": str(exc)})
        return {"skipped": str(exc)}
    version = result.version
    return {
        "version_id": version.id,
        "version": version.name,
        "status": version.status,
        "decision": version.decision,
        "validation_ndcg": version.validation_ndcg,
        "seconds": round(sum(result.timings.values()), 1),
    }


@shared_task(
    name="ranking.tasks.reindex",
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=30,
    max_retries=3,
    soft_time_limit=3600,
    time_limit=3600 + 300,
)
def reindex(kind: str = "auto", version_id: int | None = None) -> dict[str, Any]:
    """Rebuild the ANN index of the active version (or ``version_id``); a re-run just builds it again."""
    try:
        version, report = services.model_reindex(kind=kind, version_id=version_id)
    except services.TrainingError as exc:
        return {"skipped": str(exc)}
    return {"version_id": version.id, "kind": report.kind, "params": report.params, "recall": report.recall}


@shared_task(
    name="ranking.tasks.refresh_trending",
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=600,
    time_limit=900,
)
def refresh_trending() -> dict[str, Any]:
    """Recompute the active version's popularity/trending from recent Postgres data into Redis; overwrites."""
    summary = services.trending_refresh()
    return summary or {"skipped": "no active model version"}


@shared_task(
    name="ranking.tasks.rule_dry_run",
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=10,
    max_retries=2,
    soft_time_limit=1800,
    time_limit=1800 + 120,
)
def rule_dry_run(
    run_id: str, rule_id: int | None, days: float, sample: int, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A draft rule tried on recent traffic (``ranking.dry_run``); progress and result in Redis under the run id.
    A redelivery simply runs it again and overwrites the same run."""
    from ranking import dry_run

    dry_run.run_execute(run_id=run_id, rule_id=rule_id, days=days, sample=sample, config_changes=config or {})
    return {"run_id": run_id}


@shared_task(name="ranking.tasks.freshness_probe", acks_late=True, soft_time_limit=20, time_limit=30)
def freshness_probe() -> str:
    """The synthetic freshness probe (``ranking.freshness.freshness_probe``): "ok", "stale" or "error"."""
    from ranking import freshness  # it loads serving and the model machinery; only this task needs it

    return freshness.freshness_probe()
