"""The trending overlay's encoding: the popularity and trending arrays of the hourly refresh as stored in Redis
(written by ``ranking.services.trending_refresh``, read by the loader and the pinned models)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def trending_encode(popularity: np.ndarray, trending: np.ndarray, computed_at: float) -> dict[str, bytes]:
    return {
        "popularity": np.ascontiguousarray(popularity, dtype="<f4").tobytes(),
        "trending": np.ascontiguousarray(trending, dtype="<f4").tobytes(),
        "computed_at": repr(float(computed_at)).encode(),
    }


def trending_decode(blob: Mapping[bytes, bytes], n_items: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The arrays of a stored refresh, or None when absent or sized for another catalog."""
    try:
        pop = np.frombuffer(blob[b"popularity"], dtype="<f4")
        trend = np.frombuffer(blob[b"trending"], dtype="<f4")
        computed_at = float(blob[b"computed_at"])
    except (KeyError, ValueError):
        return None
    if pop.size != n_items or trend.size != n_items:
        return None
    return pop, trend, computed_at
