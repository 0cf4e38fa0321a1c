"""An experiment's results, cached briefly."""

from __future__ import annotations

import logging

from django.db import connection, transaction
from django.utils import timezone

from experiments import selectors
from experiments.results import ExperimentResults, results_build
from experiments.services.errors import ExperimentError, ExperimentNotFound

logger = logging.getLogger(__name__)


def experiment_results(*, key: str) -> ExperimentResults:
    """Per-variant metrics, comparisons with the control and diagnostics (see docs/experiments.md).

    Outside a transaction the queries share one snapshot (REPEATABLE READ, read only), so totals and series agree;
    inside a caller's transaction they use its snapshot.
    """
    if connection.in_atomic_block:
        return _experiment_results(key)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return _experiment_results(key)


def _experiment_results(key: str) -> ExperimentResults:
    spec = selectors.experiment_spec(key=key)
    if spec is None:
        raise ExperimentNotFound(f"No experiment with key {key!r}.")
    if sum(v.is_control for v in spec.variants) != 1:
        raise ExperimentError(f"{key} needs exactly one control variant before it has results.")
    started = spec.start_at is not None
    params = {"experiment_id": spec.id, "window_hours": spec.attribution_window_hours}
    return results_build(
        spec=spec,
        totals=(
            selectors.variant_totals(experiment_id=spec.id, window_hours=spec.attribution_window_hours)
            if started
            else {}
        ),
        daily=selectors.daily_totals(**params) if started else [],
        items_shown=selectors.items_shown(experiment_id=spec.id) if started else {},
        active_items=selectors.active_item_count(),
        cuped=selectors.cuped_data(**params, start_at=spec.start_at) if spec.start_at else None,
        weight_history=selectors.weight_history(experiment_id=spec.id),
        served_versions=selectors.served_versions(experiment_id=spec.id) if started else {},
        # Only for an experiment that has this guardrail: the query sorts every impression's latency.
        latency_p95_ms=(
            selectors.latency_p95_ms(experiment_id=spec.id) if started and "latency_p95_ms" in spec.guardrails else None
        ),
        computed_at=timezone.now(),
    )
