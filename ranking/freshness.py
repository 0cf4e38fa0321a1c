"""The synthetic freshness probe (every minute on a worker, ``ranking.tasks.freshness_probe``; docs/events.md): a
list served to a reserved session, its first item dismissed through the online state, the next list checked not to
have it. The lists go through ``ranking.serving.recommend`` itself, cache included; what real owners wait for their
events to show is measured there (``EVENT_TO_LIST``); both that and the probe's outcomes (``PROBE_RESULTS``) are
serving metrics of ``ranking.pipeline.responses``."""

from __future__ import annotations

import logging
import time

import redis
from django.db import DatabaseError

from events import online as events_online
from events.features import DISMISS
from events.keys import PROBE_SESSION_ID, owner_for
from ranking.pipeline import online
from ranking.pipeline.responses import PROBE_RESULTS
from ranking.serving import RecommendRequest, recommend
from ranking.shown import SHOWN_TTL_SECONDS

logger = logging.getLogger("ranking.serving")  # the name its log lines had before this module was split out

PROBE_SURFACE = "probe"


def freshness_probe() -> str:
    """Serve a list to the reserved probe session (events.keys.PROBE_SESSION_ID), dismiss its first item through
    the online state as ingestion would, serve again through the same path (cache included) and check the item is
    gone: "ok", "stale" (silent staleness: the event did not reach the list) or "error" (nothing to dismiss, or a
    failure). The probe's state is forgotten afterwards; it never touches Postgres, impressions or traffic metrics."""
    owner = owner_for(customer_id="", session_id=PROBE_SESSION_ID)
    probe = RecommendRequest(session_id=PROBE_SESSION_ID, surface=PROBE_SURFACE, count=5, probe=True)
    result = "error"
    try:
        first = recommend(probe)
        pk = online.item_pk(first.items[0].item_id) if first.items else None
        if pk is not None:
            now = time.time()
            dismiss = events_online.OnlineEvent(owner, 0, pk, None, DISMISS, None, now)
            events_online.apply_events([dismiss], now=now)
            second = recommend(probe)
            result = "stale" if first.items[0].item_id in {item.item_id for item in second.items} else "ok"
    except (redis.RedisError, DatabaseError):
        logger.warning("freshness_probe_failed", exc_info=True)
    finally:
        try:
            events_online.forget_owner(owner, version_ttl_seconds=SHOWN_TTL_SECONDS)
        except redis.RedisError:
            logger.warning("freshness_probe_cleanup_failed", exc_info=True)
    PROBE_RESULTS.labels(result).inc()
    if result != "ok":
        logger.warning("freshness_probe", extra={"result": result})
    return result
