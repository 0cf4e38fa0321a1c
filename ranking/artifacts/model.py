"""The loaded model: :class:`ActiveModel`, one version memory-mapped, and :func:`model_load`, which verifies and
maps a version directory."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from ranking import ann, sources
from ranking.arrays import VersionArrays, index_of
from ranking.artifact_store import ArtifactError
from ranking.artifacts.files import ANN_FILE, version_read_meta, version_verify


@dataclass(frozen=True, eq=False)
class ActiveModel(VersionArrays):
    """One loaded version: memory-mapped arrays (read-only, shared through the page cache by every process on
    the host), the faiss index and meta.json. Immutable: a swap replaces the whole object, so a request that
    took a reference keeps a consistent model to the end.

    Array names, shapes and dtypes are documented in docs/models.md; :meth:`array` returns any of them.
    """

    version_id: int
    name: str
    checksum: str
    path: Path
    meta: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray]
    index: faiss.Index | None
    loaded_at: float
    trending_computed_at: float | None = None

    # Sizes and maps.
    @property
    def n_items(self) -> int:
        return int(self.arrays["item_ids"].shape[0])

    @property
    def params(self) -> Mapping[str, Any]:
        return self.meta.get("params", {})

    def array(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(
                f"version {self.name} has no array {name!r} (has: {', '.join(sorted(self.arrays))})"
            ) from None

    def user_index(self, customer_pks: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Row of each customer pk in ``als_user_factors``, -1 for customers not in the training data."""
        return index_of(self.arrays["user_ids"], customer_pks)

    # ALS.
    def history_confidences(
        self,
        item_idx: npt.ArrayLike,
        types: npt.ArrayLike,
        values: npt.ArrayLike,
        age_days: npt.ArrayLike,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Raw history events (model item index, Interaction.Type, value, age in days) to (distinct items,
        ALS confidences), with this version's weights, history decay and aggregation rule."""
        p = self.params
        type_weights = {int(k): float(v) for k, v in p["type_weights"].items()}
        w = sources.event_weights(
            types, values, type_weights, rating_base=p["rating_base"], rating_per_point=p["rating_per_point"]
        ) * sources.decay(age_days, p["history_half_life_days"])
        items = np.asarray(item_idx, dtype=np.int64)
        keep = items >= 0
        return sources.history_confidences(
            items[keep],
            w[keep],
            aggregate=p["aggregate"],
            alpha=p["als_alpha"],
            scaling=p["als_scaling"],
            eps=p["als_eps"],
        )

    def fold_in(self, item_idx: npt.ArrayLike, confidences: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """A user vector from distinct history items and their confidences (see :meth:`history_confidences`)."""
        return sources.fold_in(
            self.arrays["als_item_factors"],
            item_idx,
            confidences,
            float(self.params["als_regularization"]),
            self.arrays["als_yty"],
        )

    def search(self, query: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The ``k`` items with the highest dot product with ``query`` through the ANN index (item indices, scores),
        best first; -1 pads when the catalog is smaller than ``k``."""
        if self.index is None:
            raise ArtifactError(f"version {self.name} has no ANN index; run manage.py reindex")
        scores, idx = ann.search(self.index, np.asarray(query, dtype=np.float32).reshape(1, -1), k)
        return idx[0], scores[0]

    def with_trending(self, popularity: np.ndarray, trending: np.ndarray, computed_at: float) -> ActiveModel:
        """A copy whose popularity/trending arrays are a fresher recomputation (the hourly refresh)."""
        arrays = {**self.arrays, "popularity": popularity, "trending": trending}
        return dataclasses.replace(self, arrays=arrays, trending_computed_at=computed_at)


def model_load(*, version_id: int, name: str, checksum: str, path: Path, verify: bool = True) -> ActiveModel:
    """Verify (sha256 of every file against meta.json and the registered checksum) and memory-map a version."""
    meta = version_verify(path, checksum) if verify else version_read_meta(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        for filename in meta["files"]:
            if filename.endswith(".npy"):
                mapped = np.load(path / filename, mmap_mode="r", allow_pickle=False)
                # Plain ndarray views of the mapping (which they keep alive): np.memmap's subclass hooks run on
                # every slice and fancy index of it, some thirty per request.
                arrays[filename[: -len(".npy")]] = mapped.view(np.ndarray)
        index = None
        if ANN_FILE in meta["files"]:
            index = ann.read_index(path / ANN_FILE, mmap=True)
            ann.apply_search_params(index, meta.get("ann", {}).get("params", {}))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: cannot load: {exc}") from exc
    if "item_ids" not in arrays:
        raise ArtifactError(f"{path}: no item_ids array", "missing")
    return ActiveModel(
        version_id=version_id,
        name=name,
        checksum=checksum,
        path=path,
        meta=meta,
        arrays=arrays,
        index=index,
        loaded_at=time.time(),
    )
