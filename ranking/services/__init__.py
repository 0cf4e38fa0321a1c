"""Model use cases: train a version (with its validation), decide its promotion, activate it, rebuild its ANN
index, refresh its popularity/trending, evaluate protocols, prune old artifacts.

Numeric work happens in the pure modules (``ranking.training``, ``ranking.sources``, ``ranking.ann``,
``ranking.evaluation``); this package reads the database, writes the registry and publishes the Redis marker.

One module per use case; callers import from this package:

- ``training``: the training lock, ``model_train``, ``version_build``, ``version_meta``, ``TrainResult``;
- ``registry``: ``model_version_activate`` (and the Redis marker it publishes), ``promotion_decision``,
  ``model_version_promote``;
- ``reindex``: ``model_reindex``;
- ``trending``: the hourly popularity/trending refresh, ``trending_refresh``;
- ``evaluation``: the offline protocols, ``model_evaluate``, ``active_version_params``;
- ``housekeeping``: ``model_version_prune``;
- ``errors``: ``TrainingError``, ``TrainingBusy``.

A test that replaces a module attribute patches the module that looks it up (``services.training.train_sources``,
``services.registry.promotion_decision``).
"""

from ranking.services.errors import TrainingBusy, TrainingError
from ranking.services.evaluation import active_version_params, model_evaluate
from ranking.services.housekeeping import KEEP_RETIRED_ARTIFACTS, STALE_DIRECTORY_SECONDS, model_version_prune
from ranking.services.registry import (
    _publish_marker,
    model_version_activate,
    model_version_promote,
    promotion_decision,
)
from ranking.services.reindex import model_reindex
from ranking.services.training import (
    TRAIN_LOCK_HEARTBEAT_SECONDS,
    TRAIN_LOCK_KEY,
    TRAIN_LOCK_SECONDS,
    TrainResult,
    VersionBuild,
    _training_lock,
    model_train,
    version_build,
    version_meta,
)
from ranking.services.trending import TRENDING_TTL_SECONDS, trending_refresh

__all__ = [
    "KEEP_RETIRED_ARTIFACTS",
    "STALE_DIRECTORY_SECONDS",
    "TRAIN_LOCK_HEARTBEAT_SECONDS",
    "TRAIN_LOCK_KEY",
    "TRAIN_LOCK_SECONDS",
    "TRENDING_TTL_SECONDS",
    "TrainResult",
    "TrainingBusy",
    "TrainingError",
    "VersionBuild",
    "_publish_marker",
    "_training_lock",
    "active_version_params",
    "model_evaluate",
    "model_reindex",
    "model_train",
    "model_version_activate",
    "model_version_promote",
    "model_version_prune",
    "promotion_decision",
    "trending_refresh",
    "version_build",
    "version_meta",
]
