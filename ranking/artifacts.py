"""Model version artifacts: writing a version directory atomically, checksums, memory-mapped loading, and the
loader every serving process uses to hot-swap to a newly activated version without a restart.

A version is a directory ``<name>/`` of ``.npy`` arrays (``np.load(mmap_mode="r")``), an optional faiss index and
``meta.json``, its manifest (parameters, sizes, metrics, the sha256 of every file and one checksum over them). It
is written under a temporary name and renamed when complete, so a reader never sees half a version. Where it lives
is ``STORAGES["artifacts"]`` (ranking/artifact_store.py): by default ``ARTIFACT_ROOT`` on this disk, used in place;
with a remote storage (S3-compatible object storage) training uploads it (manifest last) and every process
downloads it into its local cache (``ARTIFACT_CACHE_DIR``) and verifies it before memory-mapping it:
:func:`version_verify` and :func:`version_read_meta` fetch a version of the cache that is not there yet.

Serving calls :func:`get_active_model`: it returns the loaded :class:`ActiveModel` and, at most once per second
per process, compares the Redis marker (``model:active`` = version id, ``model:active:checksum``) with what it
holds (falling back to the database when Redis is down). A version whose files are missing, cannot be downloaded
or fail their checksums is not loaded: the previous one keeps serving, and ``recsys_model_load_failures_total``
counts it (reason ``missing``, ``checksum``, ``download``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from ranking import ann, artifact_store, sources
from ranking.artifact_store import ArtifactError, combined_checksum, file_sha256
from ranking.selectors import VersionLocation

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = artifact_store.META_FILE
ANN_FILE = "ann_als.faiss"
TMP_PREFIX = artifact_store.TMP_PREFIX

# The Redis marker: written by ranking.services when a version is activated or re-indexed, read by the loader.
# Every model key carries the hash tag {model}: the marker is published in one MULTI and read in one MGET, and the
# trending blob and its stamp are written in one MULTI, which on a Redis Cluster needs one slot.
ACTIVE_KEY = "model:{model}:active"
ACTIVE_CHECKSUM_KEY = "model:{model}:active:checksum"
# Hourly popularity/trending refresh of the active version: "<version id>:<computed_at>" plus a hash of arrays.
TRENDING_STAMP_KEY = "model:{model}:trending:stamp"
TRENDING_KEY = "model:{{model}}:{version_id}:trending"  # str.format: {{model}} is the literal tag

FALLBACKS = Counter(
    "recsys_model_fallbacks_total",
    "Times a process with no model, unable to load the active version, served an earlier version it holds instead.",
)
LOAD_FAILURES = Counter(
    "recsys_model_load_failures_total",
    "Model versions a serving process refused to load (missing files, checksum mismatch, unreadable).",
    ["reason"],
)


# --- Writing and verifying ------------------------------------------------------------------------------------


def local_root() -> Path:
    """The directory training writes a version into (this host's cache; the storage itself by default)."""
    return artifact_store.cache_root()


def _write_meta_and_publish(tmp: Path, final: Path, meta: dict[str, Any], files: dict[str, str]) -> str:
    checksum = combined_checksum(files)
    meta = {**meta, "format": FORMAT_VERSION, "files": files, "checksum": checksum}
    with open(tmp / META_FILE, "w") as handle:
        json.dump(meta, handle, indent=2, sort_keys=True, default=_json_default)
        handle.flush()
        os.fsync(handle.fileno())
    artifact_store.fsync_dir(tmp)
    if final.exists():
        raise ArtifactError(f"{final} already exists; a version directory is never overwritten")
    if not artifact_store.colocated():
        # Remote storage: the version exists once its manifest is uploaded (last); the local copy then becomes
        # this host's cached copy.
        artifact_store.publish(tmp, final.name, files)
    os.rename(tmp, final)
    artifact_store.fsync_dir(final.parent)
    return checksum


def version_write(
    root: Path,
    name: str,
    arrays: Mapping[str, np.ndarray],
    *,
    index: faiss.Index | None,
    meta: Mapping[str, Any],
) -> tuple[Path, str]:
    """Write a complete version directory ``root/name`` and return (path, checksum).

    Everything goes to ``root/.tmp-<name>-<random>`` first and is renamed into place only when every file and
    meta.json are on disk (fsynced), so a crash leaves a temporary directory, never a half version.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, str] = {}
        for array_name, array in arrays.items():
            filename = f"{array_name}.npy"
            with open(tmp / filename, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            files[filename] = file_sha256(tmp / filename)
        if index is not None:
            ann.write_index(index, tmp / ANN_FILE)
            files[ANN_FILE] = file_sha256(tmp / ANN_FILE)
        checksum = _write_meta_and_publish(tmp, final, dict(meta), files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, checksum


def version_reindex_copy(
    source: Path, name: str, *, index: faiss.Index, meta_updates: Mapping[str, Any]
) -> tuple[Path, str]:
    """A new version directory ``source.parent/name`` with ``source``'s arrays (hard links: no copy, no extra
    disk) and a new index; the source directory stays untouched for processes still reading it."""
    meta = version_read_meta(source)
    root = source.parent
    final = root / name
    tmp = root / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, str] = {}
        for filename, sha in meta["files"].items():
            if filename == ANN_FILE:
                continue
            try:
                os.link(source / filename, tmp / filename)
            except OSError:  # another filesystem, or links not supported: copy instead
                shutil.copy2(source / filename, tmp / filename)
            files[filename] = sha
        ann.write_index(index, tmp / ANN_FILE)
        files[ANN_FILE] = file_sha256(tmp / ANN_FILE)
        new_meta = {k: v for k, v in meta.items() if k not in ("files", "checksum", "format")}
        new_meta.update(meta_updates)
        checksum = _write_meta_and_publish(tmp, final, new_meta, files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, checksum


def _ensure_local(path: Path, expected_checksum: str | None) -> bool:
    """With a remote storage, download a version of this host's cache that is not there yet (a no-op otherwise).
    True when it did: the download has verified every file against the manifest and ``expected_checksum``."""
    if not path.is_dir() and artifact_store.in_cache(path):
        return artifact_store.fetch(path.name, expected_checksum)
    return False


def version_read_meta(path: Path) -> dict[str, Any]:
    _ensure_local(path, None)
    try:
        with open(path / META_FILE) as handle:
            meta = json.load(handle)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path / META_FILE} is missing", "missing") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path / META_FILE} is unreadable: {exc}") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    return meta


def version_verify(path: Path, expected_checksum: str | None = None) -> dict[str, Any]:
    """Check that every file listed in meta.json exists and matches its sha256; return the meta.

    Raises :class:`ArtifactError` (reason ``missing`` or ``checksum``; ``download`` when a remote storage fails)
    otherwise. With a remote storage the version is downloaded into the cache first, and a cached copy that fails
    is discarded, so the next attempt downloads it again.
    """
    if _ensure_local(path, expected_checksum):
        return version_read_meta(path)  # just verified while downloading: no second pass over the files
    try:
        return _verify_local(path, expected_checksum)
    except ArtifactError as exc:
        if exc.reason in ("missing", "checksum") and artifact_store.in_cache(path):
            artifact_store.discard(path)
        raise


def _verify_local(path: Path, expected_checksum: str | None) -> dict[str, Any]:
    meta = version_read_meta(path)
    files: dict[str, str] = meta.get("files", {})
    if expected_checksum and meta.get("checksum") != expected_checksum:
        raise ArtifactError(
            f"{path}: meta.json checksum {meta.get('checksum')} is not the registered {expected_checksum}", "checksum"
        )
    if combined_checksum(files) != meta.get("checksum"):
        raise ArtifactError(f"{path}: the file list does not match the version checksum", "checksum")
    for filename, sha in files.items():
        file_path = path / filename
        if not file_path.is_file():
            raise ArtifactError(f"{file_path} is missing", "missing")
        if file_sha256(file_path) != sha:
            raise ArtifactError(f"{file_path} does not match its sha256", "checksum")
    return meta


# --- The loaded model -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ActiveModel:
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
    def item_ids(self) -> npt.NDArray[np.int64]:
        return self.arrays["item_ids"]

    @property
    def params(self) -> Mapping[str, Any]:
        return self.meta.get("params", {})

    def has(self, name: str) -> bool:
        return name in self.arrays

    def array(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(
                f"version {self.name} has no array {name!r} (has: {', '.join(sorted(self.arrays))})"
            ) from None

    def item_index(self, item_pks: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Model index of each catalog.Item pk, -1 for items the version does not know (added after training)."""
        pks = np.asarray(item_pks, dtype=np.int64)
        ids = self.item_ids
        if ids.size == 0:
            return np.full(pks.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(ids, pks), ids.size - 1)
        return np.where(ids[pos] == pks, pos, -1).astype(np.int64)

    def user_index(self, customer_pks: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Row of each customer pk in ``als_user_factors``, -1 for customers not in the training data."""
        pks = np.asarray(customer_pks, dtype=np.int64)
        ids = self.arrays["user_ids"]
        if ids.size == 0:
            return np.full(pks.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(ids, pks), ids.size - 1)
        return np.where(ids[pos] == pks, pos, -1).astype(np.int64)

    @property
    def popularity(self) -> np.ndarray:
        return self.arrays["popularity"]

    @property
    def trending(self) -> np.ndarray:
        return self.arrays["trending"]

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


# --- Trending overlay encoding (written by the hourly refresh, read by the loader) ----------------------------


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


# --- The hot-swapping loader ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """What the registry says should be served: the active version and its checksum (plus the trending stamp)."""

    version_id: int
    checksum: str
    trending_stamp: str = ""


def _redis_marker() -> Marker | None:
    """The marker from Redis; raises redis.RedisError when Redis is unreachable, None when no marker is set."""
    from kernel import redis_client

    raw_id, raw_checksum, raw_stamp = redis_client.get().mget(ACTIVE_KEY, ACTIVE_CHECKSUM_KEY, TRENDING_STAMP_KEY)
    if raw_id is None:
        return None
    return Marker(int(raw_id), (raw_checksum or b"").decode(), (raw_stamp or b"").decode())


def _database_marker() -> Marker | None:
    from ranking import selectors

    location = selectors.active_version_location()
    return Marker(location.version_id, location.checksum) if location else None


def _default_read_marker() -> Marker | None:
    import redis

    try:
        marker = _redis_marker()
    except redis.RedisError as exc:
        logger.warning("model_marker_redis_unavailable", extra={"error": str(exc)})
        return _database_marker()
    # No marker in Redis (flushed, or never published): the database is the source of truth.
    return marker if marker is not None else _database_marker()


def _default_locate(version_id: int) -> VersionLocation | None:
    from ranking import selectors

    return selectors.version_location(version_id=version_id)


def _load_location(location: VersionLocation) -> ActiveModel:
    return model_load(
        version_id=location.version_id, name=location.name, checksum=location.checksum, path=location.path
    )


def _default_previous(version_id: int) -> list[VersionLocation]:
    from ranking import selectors

    return selectors.previous_version_locations(exclude_id=version_id)


def _default_read_trending(version_id: int) -> Mapping[bytes, bytes]:
    from kernel import redis_client

    return redis_client.get().hgetall(TRENDING_KEY.format(version_id=version_id))


class ModelLoader:
    """Holds the active model of this process and swaps it when the registry's marker changes.

    Thread-safe: readers never block once a model is loaded (the one thread that notices a change loads the new
    version while the others keep serving the old one); only the very first load makes callers wait.
    """

    def __init__(
        self,
        *,
        check_interval: float = 1.0,
        db_check_interval: float = 60.0,
        retry_failed_after: float = 30.0,
        retry_failed_max: float = 600.0,
        read_marker: Callable[[], Marker | None] = _default_read_marker,
        read_db_marker: Callable[[], Marker | None] = _database_marker,
        locate: Callable[[int], VersionLocation | None] = _default_locate,
        read_trending: Callable[[int], Mapping[bytes, bytes]] = _default_read_trending,
        previous: Callable[[int], list[VersionLocation]] = _default_previous,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check_interval = check_interval
        self.db_check_interval = db_check_interval
        self.retry_failed_after = retry_failed_after
        self.retry_failed_max = retry_failed_max
        self._read_marker = read_marker
        self._read_db_marker = read_db_marker
        self._locate = locate
        self._read_trending = read_trending
        self._previous = previous
        self._clock = clock
        self._lock = threading.Lock()
        self._current: ActiveModel | None = None
        self._next_check = 0.0
        # The first check goes through Redis (which falls back to the database by itself) so the trending stamp
        # is seen at once; the database is then asked on its own once per db_check_interval.
        self._next_db_check = clock() + db_check_interval
        self._trending_stamp = ""
        # (version id, checksum) -> (when to try it again, how many attempts failed in a row).
        self._failed: dict[tuple[int, str], tuple[float, int]] = {}
        self._stale_marker: tuple[int, str] | None = None

    def get(self) -> ActiveModel | None:
        current = self._current
        if current is not None and self._clock() < self._next_check:
            return current
        # With a model in hand nobody waits: whoever gets the lock checks, the others serve what is loaded.
        if not self._lock.acquire(blocking=current is None):
            return current
        try:
            # Also without a model (none trained yet) the registry is asked at most once per interval.
            if self._clock() >= self._next_check:
                self._next_check = self._clock() + self.check_interval
                self._check()
        finally:
            self._lock.release()
        return self._current

    def refresh(self) -> ActiveModel | None:
        """Check the marker now, whatever the interval (tests, management commands)."""
        with self._lock:
            self._next_check = self._clock() + self.check_interval
            self._check()
        return self._current

    def reset(self) -> None:
        with self._lock:
            self._current = None
            self._next_check = 0.0
            self._next_db_check = self._clock() + self.db_check_interval
            self._trending_stamp = ""
            self._failed.clear()
            self._stale_marker = None

    def _check(self) -> None:
        from django.db import DatabaseError

        # Redis answers the frequent check; the database, the source of truth, is asked once a minute too, so a
        # marker that failed to publish (Redis blip during activation) cannot pin an old version for long.
        use_database = self._clock() >= self._next_db_check
        if use_database:
            self._next_db_check = self._clock() + self.db_check_interval
        try:
            marker = self._read_db_marker() if use_database else self._read_marker()
            if marker is not None and not use_database and self._differs(marker):
                marker = self._confirmed(marker)
        except DatabaseError as exc:
            logger.warning("model_marker_unavailable", extra={"error": str(exc)})
            return
        if use_database:
            self._stale_marker = None
        if marker is None:
            return
        if self._differs(marker):
            self._switch(marker)
        self._apply_trending(marker)

    def _differs(self, marker: Marker) -> bool:
        current = self._current
        return current is None or (current.version_id, current.checksum) != (marker.version_id, marker.checksum)

    def _confirmed(self, marker: Marker) -> Marker | None:
        """A Redis marker naming another version is checked against the database once (cheap: only on changes).
        If the database disagrees (a publish was lost), its answer wins and the stale marker is ignored until the
        next periodic database check, so processes never flip between the two."""
        if self._stale_marker == (marker.version_id, marker.checksum):
            return None
        truth = self._read_db_marker()
        if truth is None or (truth.version_id, truth.checksum) == (marker.version_id, marker.checksum):
            return marker
        self._stale_marker = (marker.version_id, marker.checksum)
        logger.warning(
            "model_marker_stale",
            extra={"redis_version_id": marker.version_id, "database_version_id": truth.version_id},
        )
        return truth

    def _switch(self, marker: Marker) -> None:
        from django.db import DatabaseError

        key = (marker.version_id, marker.checksum)
        failed = self._failed.get(key)
        if failed is not None and self._clock() < failed[0]:
            return
        try:
            location = self._locate(marker.version_id)
        except DatabaseError as exc:
            logger.warning("model_version_lookup_failed", extra={"version_id": marker.version_id, "error": str(exc)})
            return
        if location is None:
            self._fail(key, "missing", f"version {marker.version_id} is not in the registry")
            return
        try:
            model = _load_location(location)
        except ArtifactError as exc:
            self._fail(key, exc.reason, str(exc))
            if self._current is None:
                self._fall_back(marker.version_id)
            return
        previous = self._current
        self._current = model
        self._trending_stamp = ""
        self._failed.pop(key, None)
        logger.info(
            "model_version_loaded",
            extra={
                "version_id": model.version_id,
                "version": model.name,
                "previous_version_id": previous.version_id if previous else None,
            },
        )

    def _fall_back(self, failed_id: int) -> None:
        """Nothing loaded and the active version cannot be (a corrupt object in the bucket, say): serve the most
        recently active earlier version this host holds and that verifies, until the active one loads. Without it a
        process started (or a worker recycled) meanwhile served no model at all (found by a sixth tester, 5
        December). Only versions already here: no download of an old version on a request's path."""
        from django.db import DatabaseError

        try:
            candidates = self._previous(failed_id)
        except DatabaseError:
            return
        for location in candidates:
            if not location.path.is_dir():
                continue
            try:
                model = _load_location(location)
            except ArtifactError:
                continue
            self._current = model
            self._trending_stamp = ""
            FALLBACKS.inc()
            logger.error(
                "model_version_fallback",
                extra={"failed_version_id": failed_id, "serving_version_id": model.version_id},
            )
            return

    def _fail(self, key: tuple[int, str], reason: str, message: str) -> None:
        """Count and log a version that could not be loaded, and when to try it again: a download that failed (the
        storage unreachable) after ``retry_failed_after`` seconds; a version that is missing or fails its checksums
        (it stays so until someone repairs it, re-indexes or rolls back) after twice as long as the last time, up to
        ``retry_failed_max``, so a corrupt object in the bucket is not downloaded by every process every 30 s for
        hours (a sixth tester, 5 December). A new checksum (a re-index) or another version is tried at once."""
        LOAD_FAILURES.labels(reason).inc()
        attempts = self._failed.get(key, (0.0, 0))[1] + 1
        delay = self.retry_failed_after
        if reason != "download":
            delay = min(self.retry_failed_after * 2 ** (attempts - 1), max(self.retry_failed_max, delay))
        self._failed[key] = (self._clock() + delay, attempts)
        current = self._current
        logger.error(
            "model_version_load_failed",
            extra={
                "version_id": key[0],
                "reason": reason,
                "error": message,
                "serving_version_id": current.version_id if current else None,
                "attempts": attempts,
                "retry_in_seconds": round(delay),
            },
        )

    def _apply_trending(self, marker: Marker) -> None:
        import redis

        current = self._current
        if current is None or not marker.trending_stamp or marker.trending_stamp == self._trending_stamp:
            return
        version, _, _ = marker.trending_stamp.partition(":")
        if version != str(current.version_id):
            return
        try:
            decoded = trending_decode(self._read_trending(current.version_id), current.n_items)
        except redis.RedisError:
            return
        self._trending_stamp = marker.trending_stamp
        if decoded is not None:
            self._current = current.with_trending(*decoded)


_loader = ModelLoader()


def get_active_model() -> ActiveModel | None:
    """The active model version of this process (None until one has been trained and activated)."""
    return _loader.get()


def loader() -> ModelLoader:
    """The process-wide loader (tests reset it; commands may force a refresh)."""
    return _loader


class PinnedModels:
    """Versions that experiment variants name (``VariantConfig.model_version``), loaded on first use beside the
    active one and kept (the last ``size``), so that an arm serves another version than the active one: the A/B
    test of a new model before it is activated. A version that cannot be found or loaded is retried after
    ``retry_after`` seconds; meanwhile its arm serves the active version (logged and counted, as a failed
    activation is). Its trending overlay is the one stored when it was loaded."""

    def __init__(self, *, size: int = 2, retry_after: float = 60.0) -> None:
        self.size = size
        self.retry_after = retry_after
        self._models: dict[int, ActiveModel] = {}  # insertion order = least recently used first
        self._failed: dict[int, float] = {}
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}  # one load per version at a time; the others wait for it

    def _cached(self, version_id: int) -> ActiveModel | None:
        with self._lock:
            model = self._models.pop(version_id, None)
            if model is not None:
                self._models[version_id] = model  # now the most recently used
            return model

    def get(self, version_id: int) -> ActiveModel | None:
        model = self._cached(version_id)
        if model is not None:
            return model
        with self._lock:
            loading = self._loading.setdefault(version_id, threading.Lock())
        with loading:  # the thread loading it first, the others after, finding it (or its failure) here
            model = self._cached(version_id)
            if model is not None or time.monotonic() < self._failed.get(version_id, 0.0):
                return model
            model = self._load(version_id)
            with self._lock:
                if model is None:
                    self._failed[version_id] = time.monotonic() + self.retry_after
                    return None
                self._models[version_id] = model
                while len(self._models) > self.size:
                    self._models.pop(next(iter(self._models)))
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._failed.clear()
            self._loading.clear()

    @staticmethod
    def _load(version_id: int) -> ActiveModel | None:
        import redis
        from django.db import DatabaseError

        try:
            location = _default_locate(version_id)
        except DatabaseError as exc:
            logger.warning("model_version_lookup_failed", extra={"version_id": version_id, "error": str(exc)})
            return None
        if location is None:
            LOAD_FAILURES.labels("missing").inc()
            logger.error("pinned_model_version_missing", extra={"version_id": version_id})
            return None
        try:
            model = model_load(
                version_id=location.version_id, name=location.name, checksum=location.checksum, path=location.path
            )
        except ArtifactError as exc:
            LOAD_FAILURES.labels(exc.reason).inc()
            logger.error("pinned_model_version_load_failed", extra={"version_id": version_id, "error": str(exc)})
            return None
        try:
            decoded = trending_decode(_default_read_trending(version_id), model.n_items)
        except redis.RedisError:
            decoded = None
        logger.info("pinned_model_version_loaded", extra={"version_id": version_id, "version": model.name})
        return model.with_trending(*decoded) if decoded is not None else model


_pinned = PinnedModels()


def model_for(version_id: int | None) -> ActiveModel | None:
    """The model a request serves: the version an experiment arm names (``version_id``), else, or when that one
    cannot be loaded, the active one."""
    active = _loader.get()
    if version_id is None or (active is not None and active.version_id == version_id):
        return active
    return _pinned.get(version_id) or active


def pinned() -> PinnedModels:
    """The process-wide cache of the versions experiment arms name (tests clear it)."""
    return _pinned


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
