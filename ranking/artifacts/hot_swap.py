"""The hot-swapping loader: the Redis marker (and its database fallback) that says which version to serve, the
:class:`ModelLoader` every serving process holds, and :func:`get_active_model`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import Counter

from ranking.artifact_store import ArtifactError
from ranking.artifacts.model import ActiveModel, model_load
from ranking.artifacts.trending import trending_decode
from ranking.selectors import VersionLocation

# The logger keeps the name it had before ranking/artifacts.py became a package: operators filter on it
# (docs/operations.md) and tests capture it.
logger = logging.getLogger("ranking.artifacts")

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
