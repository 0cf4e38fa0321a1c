"""Housekeeping: pruning the artifact directories nobody will load again."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from django.conf import settings

from experiments import selectors as experiments_selectors
from ranking import artifact_store, artifacts, selectors
from ranking.models import ModelVersion

# The logger keeps the name it had before ranking/services.py became a package (log filters, dashboards).
logger = logging.getLogger("ranking.services")

KEEP_RETIRED_ARTIFACTS = 3
STALE_DIRECTORY_SECONDS = 24 * 3600


def model_version_prune(*, keep_retired: int = KEEP_RETIRED_ARTIFACTS) -> list[str]:
    """Delete artifact directories nobody will load again: retired versions beyond the newest ``keep_retired``
    (kept for a quick rollback; a version an experiment's arm or a surface default names is kept too), and
    directories of this host's version directory no version names (superseded re-index copies, leftovers of
    crashed runs) once they are a day old. Returns the deleted paths.

    Local: the directory training writes into and serving maps from (``artifacts.local_root()``: the cache when
    the storage is remote), by directory name, never the compiled rankers' ``.compiled``. Remote: only retired
    versions beyond those kept, through the storage (``artifact_store.remove``). It looked in ``ARTIFACT_ROOT`` by
    resolved path: with a shared mount as the storage and a local cache, every version there looked unreferenced,
    the active one included (found by a sixth tester, 5 December)."""
    root = artifacts.local_root()
    pinned = experiments_selectors.pinned_model_versions()
    keep: set[str] = set()
    retired_beyond: list[str] = []
    retired_seen = 0
    for version_id, status, name, path in selectors.versions_with_artifacts():
        dir_name = Path(path).name if path else name
        if status == ModelVersion.Status.RETIRED and version_id not in pinned:
            retired_seen += 1
            if retired_seen > keep_retired:
                retired_beyond.append(dir_name)
                continue
        keep.add(dir_name)
    retired_beyond = [name for name in retired_beyond if name not in keep]  # a re-index copy shares no name
    for name in retired_beyond:
        try:
            artifact_store.remove(name)
        except artifacts.ArtifactError:
            logger.warning("model_artifacts_remove_failed", extra={"version": name}, exc_info=True)
    cutoff = time.time() - STALE_DIRECTORY_SECONDS
    compiled = Path(settings.COMPILED_RANKER_DIR).resolve() if settings.COMPILED_RANKER_DIR else None
    candidates = {root / name for name in retired_beyond}
    if root.exists():
        candidates |= {
            child for child in root.iterdir()
            if child.is_dir() and child.name not in keep and child.resolve() != compiled
            and child.stat().st_mtime < cutoff
        }  # fmt: skip
    deleted = []
    for directory in sorted(candidates):
        if directory.exists() and directory.parent.resolve() == root.resolve():
            shutil.rmtree(directory, ignore_errors=True)
            deleted.append(str(directory))
    if deleted:
        logger.info("model_artifacts_pruned", extra={"deleted": deleted})
    return deleted
