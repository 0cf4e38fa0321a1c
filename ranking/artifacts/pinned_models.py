"""The versions experiment arms name (``VariantConfig.model_version``), loaded beside the active one:
:class:`PinnedModels`, and :func:`model_for`, the model a request serves."""

from __future__ import annotations

import logging
import threading
import time

from ranking.artifact_store import ArtifactError
from ranking.artifacts.hot_swap import LOAD_FAILURES, _default_locate, _default_read_trending, _loader
from ranking.artifacts.model import ActiveModel, model_load
from ranking.artifacts.trending import trending_decode

# The logger keeps the name it had before ranking/artifacts.py became a package: operators filter on it
# (docs/operations.md) and tests capture it.
logger = logging.getLogger("ranking.artifacts")


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
