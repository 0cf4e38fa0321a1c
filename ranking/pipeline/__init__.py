"""One pipeline for serving, offline evaluation and the ranker's training rows.

``state``: the request-state dataclass and shared constants; ``stages``: the pure stages (history -> user vector ->
retrieve -> score -> re-rank -> explain); ``online``: the Redis/Postgres adapters serving feeds them with;
``offline``: the same stages fed from a training log as of a split's reference time.

The interface training's tuning calls: :func:`served_lists` (the lists a version would serve a split's test users
in a serving mode) and :func:`served_quality` (their NDCG@K, hit rate, coverage, max category share).
"""

from ranking.pipeline.offline import (
    PipelineEvaluation,
    TrainedModel,
    booster_from_array,
    booster_to_array,
    evaluate_with_pipeline,
    offline_inputs,
    ranker_fit,
    served_lists,
    served_quality,
)
from ranking.pipeline.state import PIPELINE, SERVE_KEY, serve_mode_of, serve_source

__all__ = [
    "PIPELINE", "SERVE_KEY", "PipelineEvaluation", "TrainedModel", "booster_from_array", "booster_to_array",
    "evaluate_with_pipeline", "offline_inputs", "ranker_fit", "serve_mode_of", "serve_source", "served_lists",
    "served_quality",
]  # fmt: skip
