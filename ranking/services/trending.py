"""The hourly popularity/trending refresh of the active version, stored in Redis for every loader."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.utils import timezone

from kernel import redis_client
from ranking import artifacts, selectors
from ranking.dataset import ItemTable
from ranking.training import TrainParams, train_sources

# The logger keeps the name it had before ranking/services.py became a package (log filters, dashboards).
logger = logging.getLogger("ranking.services")

TRENDING_TTL_SECONDS = 3 * 3600  # a refresh older than this is ignored; serving falls back to the trained arrays


def trending_refresh(*, now: datetime | None = None) -> dict[str, Any] | None:
    """Recompute the active version's popularity and trending arrays from recent Postgres data and store them in
    Redis (``model:<id>:trending``, expiring after 3 h) with a stamp that makes every loader pick them up.

    "Now" is the reference time (:meth:`InteractionLog.reference_ts`) of the events since the version's own
    reference minus the trending window: the current time on a live stream, the data's end on a frozen one (the
    demo data ends in 2011, a few demo clicks cannot move it). Items added after training are not in the
    version's map and are skipped. Returns a summary, or None when no version is active.
    """
    row = selectors.active_version()
    if row is None:
        return None
    location = selectors.version_location(version_id=row.id)
    assert location is not None
    meta = artifacts.version_read_meta(location.path)
    params = TrainParams.from_dict(meta.get("params", {}))
    now = now or timezone.now()
    window = timedelta(days=params.trending_recent_days + params.trending_baseline_days)
    trained_reference = meta.get("data", {}).get("reference_ts")
    since = (datetime.fromtimestamp(trained_reference, tz=UTC) if trained_reference else now) - window
    item_ids = np.load(location.path / "item_ids.npy", mmap_mode="r")
    items = ItemTable(
        item_ids=np.asarray(item_ids), category=np.zeros(item_ids.size, np.int32), texts=[""] * item_ids.size
    )
    columns = selectors.interaction_columns(since=since, until=now + timedelta(seconds=1))
    log = selectors.log_of(columns, items, sessions=False)
    reference = datetime.fromtimestamp(log.reference_ts(), tz=UTC) if len(log) else now
    trained = train_sources(log, items, params, reference_ts=reference.timestamp(), include=("popularity", "trending"))
    computed_at = time.time()
    key = artifacts.TRENDING_KEY.format(version_id=row.id)
    pipe = redis_client.atomic(key)  # the trending keys share the tag {model}
    pipe.delete(key)
    pipe.hset(
        key, mapping=artifacts.trending_encode(trained.arrays["popularity"], trained.arrays["trending"], computed_at)
    )
    pipe.expire(key, TRENDING_TTL_SECONDS)
    pipe.set(artifacts.TRENDING_STAMP_KEY, f"{row.id}:{computed_at:.3f}", ex=TRENDING_TTL_SECONDS)
    pipe.execute()
    summary = {
        "version_id": row.id,
        "reference": reference.isoformat(),
        "events": len(log),
        "trending_items": int((trained.arrays["trending"] > 1.0).sum()),
    }
    logger.info("trending_refreshed", extra=summary)
    return summary
