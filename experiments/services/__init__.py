"""Experiment use cases: assignment on the hot path, impression logging, the experiment lifecycle, results and the
bandit. Serving code (ranking) talks to this module only, through ``assign`` and ``impression_log``.

Hot path: ``assign`` runs no query. Running experiments, variants and surface defaults live in an in-process snapshot
that is checked against the Redis version token ``exp:version`` at most once a second and reloaded when the token
changed (every lifecycle service writes a new token after commit). With Redis down the snapshot is reloaded from
Postgres, still at most once a second.
"""

from experiments.services.assignment import (
    Assignment,
    assign,
    assignment_cache_clear,
    forced_variant_known,
    surface_known,
    variant_known,
    version_bump_on_commit,
)
from experiments.services.bandit import BANDIT_MIN_SHARE, bandit_reweight
from experiments.services.errors import ExperimentError, ExperimentNotFound
from experiments.services.impressions import (
    FLUSH_LOCK_SECONDS,
    IMPRESSION_PUSH_INTERVAL_SECONDS,
    MAX_QUEUED_IMPRESSIONS,
    FlushSummary,
    _buffer,
    _ImpressionBuffer,
    impression_log,
    impressions_buffer_clear,
    impressions_flush,
    impressions_push,
)
from experiments.services.lifecycle import (
    experiment_conclude,
    experiment_create,
    experiment_start,
    experiment_stop,
    surface_default_get,
    surface_default_set,
)
from experiments.services.results import experiment_results
from experiments.validation import VariantSpec
from kernel import redis_client  # noqa: F401  (tests reach the client through this package)

__all__ = [
    "BANDIT_MIN_SHARE",
    "FLUSH_LOCK_SECONDS",
    "MAX_QUEUED_IMPRESSIONS",
    "_ImpressionBuffer",
    "_buffer",
    "surface_known",
    "variant_known",
    "version_bump_on_commit",
    "IMPRESSION_PUSH_INTERVAL_SECONDS",
    "Assignment",
    "ExperimentError",
    "ExperimentNotFound",
    "FlushSummary",
    "VariantSpec",
    "assign",
    "assignment_cache_clear",
    "bandit_reweight",
    "forced_variant_known",
    "experiment_conclude",
    "experiment_create",
    "experiment_results",
    "experiment_start",
    "experiment_stop",
    "impression_log",
    "impressions_flush",
    "impressions_buffer_clear",
    "impressions_push",
    "surface_default_get",
    "surface_default_set",
]
