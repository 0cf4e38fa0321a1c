"""Re-indexing: a version's ANN index rebuilt into a new directory that shares its arrays."""

from __future__ import annotations

import logging
import secrets

import numpy as np
from django.db import transaction
from django.utils import timezone

from ranking import ann, artifacts, selectors
from ranking.models import ModelVersion
from ranking.services.errors import TrainingError
from ranking.services.registry import _fmt, _publish_marker
from ranking.services.training import _build_ann
from ranking.training import TrainParams

# The logger keeps the name it had before ranking/services.py became a package (log filters, dashboards).
logger = logging.getLogger("ranking.services")


def model_reindex(*, kind: str = "auto", version_id: int | None = None) -> tuple[ModelVersion, ann.AnnReport]:
    """Rebuild the faiss index of the active version (or ``version_id``) with ``kind`` (auto: flat for small
    catalogs, HNSW above), tuned to the version's recall target, into a new directory that shares the arrays by
    hard links; the registry row then points at it and serving hot-swaps (the checksum changed)."""
    ann.choose_kind(0, kind)  # validate the kind before any work
    row = selectors.active_version() if version_id is None else ModelVersion.objects.filter(id=version_id).first()
    if row is None:
        raise TrainingError(
            "no model version to re-index (train one first)" if version_id is None else "no such version"
        )
    location = selectors.version_location(version_id=row.id)
    assert location is not None
    meta = artifacts.version_verify(location.path, location.checksum)
    params = TrainParams.from_dict(meta.get("params", {}))
    item_factors = np.load(location.path / "als_item_factors.npy", mmap_mode="r")
    user_factors = np.load(location.path / "als_user_factors.npy", mmap_mode="r")
    index, report = _build_ann(item_factors, user_factors, params, kind=kind)
    name = f"{row.name}-r{timezone.now():%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
    path, checksum = artifacts.version_reindex_copy(
        location.path, name, index=index, meta_updates={"ann": report.to_dict()}
    )
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(id=row.id)
        version.artifact_path = str(path)
        version.checksum = checksum
        version.ann_kind = report.kind
        version.ann_recall = report.recall
        note = f"re-indexed: {report.kind} {report.params}, recall@{report.recall_k} {_fmt(report.recall)}"
        version.notes = f"{version.notes}\n{note}".strip()
        version.save(update_fields=["artifact_path", "checksum", "ann_kind", "ann_recall", "notes"])
        if version.status == ModelVersion.Status.ACTIVE:
            version_id_, checksum_ = version.id, checksum
            transaction.on_commit(lambda: _publish_marker(version_id_, checksum_))
    logger.info(
        "model_version_reindexed", extra={"version_id": version.id, "kind": report.kind, "recall": report.recall}
    )
    return version, report
