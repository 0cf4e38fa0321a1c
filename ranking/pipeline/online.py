"""Serving's adapters: what the pipeline's stages read from Redis, Postgres and process memory — the owner's online
state (Redis; Postgres when it is down or lost), item attributes (the item cache), opt-outs, the newest arrivals
and category ids, popular/trending top lists per model, the online click-through counters, the compiled ranker.
Each returns the plain arrays the pure stages (``ranking.pipeline.stages``) take; offline evaluation passes the
same arrays built from a training log (``ranking.pipeline.offline``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
from django.conf import settings
from django.db import DatabaseError

from catalog import selectors as catalog_selectors
from catalog.selectors import ItemRow
from catalog.services import OPT_OUT_VERSION_KEY
from events import online as events_online
from events import selectors as event_selectors
from events import services as event_services
from kernel import redis_client
from kernel.background import Periodic
from kernel.versions import VersionedSnapshot
from ranking import retrieval
from ranking.artifacts import ActiveModel
from ranking.compiled_ranker import ServingRanker
from ranking.item_cache import ItemCache
from ranking.pipeline.offline import booster_from_array
from ranking.pipeline.responses import DEGRADED
from ranking.pipeline.stages import to_pks
from ranking.pipeline.state import HISTORY_LIMIT, QUOTAS, GlobalLists, History, ItemAttributes
from ranking.ranker import click_through_rate

logger = logging.getLogger(__name__)
TOP_LIST = 1000  # popular/trending candidates kept per model (the quotas take their heads)

# --- Catalog reads ----------------------------------------------------------------------------------------


def catalog_rows(pks: Sequence[int]) -> dict[int, ItemRow]:
    """Rows of a few items, from this process's item cache when it has them."""
    return _items.rows(pks)


def item_pk(item_id: str) -> int | None:
    """From this process's item cache when it knows the item (an id never moves to another item), so the item
    endpoints keep answering while Postgres is down; else one query (which raises when Postgres is down)."""
    found = _items.pks_of([item_id])
    if found.size and int(found[0]) in _items.rows([int(found[0])]):
        return int(found[0])
    return catalog_selectors.item_pk(external_id=item_id)


_items = ItemCache()


class _OptOuts:
    """The external ids of opted-out customers, in process memory: every request asks, and they are few.

    Reloaded from Postgres when the opt-out version in Redis moves (every change bumps it; checked at most twice a
    second) and at least once a minute (kernel.versions.VersionedSnapshot). Until the first load succeeds (Postgres
    down at start-up) everyone counts as opted out: a non-personal list is the privacy-safe answer. A failed reload
    keeps the last complete set, which stays right because an opt-out cannot be recorded while Postgres is down.
    """

    def __init__(self, *, check_seconds: float = 0.5, max_age_seconds: float = 60.0) -> None:
        self._ids: VersionedSnapshot[frozenset[str] | None] = VersionedSnapshot(
            key=OPT_OUT_VERSION_KEY,
            load=lambda: catalog_selectors.opted_out_customer_ids(),
            fallback=None,
            check_seconds=check_seconds,
            max_age_seconds=max_age_seconds,
            name="opt_outs",
        )

    def contains(self, customer_id: str) -> bool:
        ids = self._ids.get()
        return True if ids is None else customer_id in ids

    def clear(self) -> None:
        self._ids.clear()


opt_outs = _OptOuts()


class _Recent:
    """Small per-process caches of things that change slowly: newest items, category ids, popular fallback.
    When Postgres is down they keep answering with the last value they had (or ``default``)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._values: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Any, default: Any = None) -> Any:
        now = time.monotonic()
        hit = self._values.get(key)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        try:
            value = load()
        except DatabaseError:
            logger.warning("serving_lookup_failed", extra={"key": key}, exc_info=True)
            return hit[1] if hit else default
        with self._lock:
            self._values[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


_recent = _Recent(ttl=60.0)


def new_arrivals() -> npt.NDArray[np.int64]:
    def load() -> npt.NDArray[np.int64]:
        return np.array(catalog_selectors.newest_available_item_pks(limit=QUOTAS["new"]), np.int64)

    return _recent.get("new", load, np.empty(0, np.int64))


def category_pk(category: str) -> int | None:
    return _recent.get(f"category:{category}", lambda: catalog_selectors.category_pk(external_id=category))


def popular_fallback() -> npt.NDArray[np.int64]:
    """Without a model: the most interacted-with items of late."""

    def load() -> npt.NDArray[np.int64]:
        return np.array(event_selectors.recently_popular_item_pks(), np.int64)

    return _recent.get("popular_fallback", load, np.empty(0, np.int64))


# --- Model-side helpers -----------------------------------------------------------------------------------


class _TopLists:
    """Popular and trending top lists per loaded model, computed once instead of per request. Kept for a few models
    at once, each under its own key: the active one, the one a hot swap is leaving, and those experiment arms name
    (ranking.artifacts.PinnedModels), which take turns request by request; one shared slot let a request of one
    model read (or store into) the lists of another, numbered for another catalog."""

    MODELS = 4

    def __init__(self) -> None:
        self._by_model: dict[tuple[int, str, float | None], dict[str, retrieval.SourceHits]] = {}
        self._lock = threading.Lock()

    def _lists(self, model: ActiveModel) -> dict[str, retrieval.SourceHits]:
        key = (model.version_id, model.checksum, model.trending_computed_at)  # (see _rankers below)
        lists = self._by_model.get(key)
        if lists is None:
            with self._lock:
                lists = self._by_model.get(key)
                if lists is None:
                    lists = {
                        "popular": retrieval.top_k(np.asarray(model.popularity), TOP_LIST),
                        "trending": retrieval.top_k(np.asarray(model.trending), TOP_LIST),
                    }
                    self._by_model[key] = lists
                    while len(self._by_model) > self.MODELS:
                        self._by_model.pop(next(iter(self._by_model)))
        return lists

    def get(self, model: ActiveModel, name: str) -> retrieval.SourceHits:
        return self._lists(model)[name]

    def popular_in_category(self, model: ActiveModel, category_pk: int) -> retrieval.SourceHits:
        """The popular list with ``category_pk``'s items first (a page's category as a retrieval anchor), then the
        rest of the catalog's popular items; computed once per model and category."""
        name = f"popular:{category_pk}"
        lists = self._lists(model)
        found = lists.get(name)
        if found is not None:
            return found
        overall = self.get(model, "popular")
        popularity = np.asarray(model.popularity)
        inside = retrieval.top_k(popularity, TOP_LIST, exclude=np.asarray(model.array("item_category")) != category_pk)
        rest = ~np.isin(overall.item_idx, inside.item_idx)
        merged = retrieval.SourceHits(
            np.concatenate([inside.item_idx, overall.item_idx[rest]])[:TOP_LIST],
            np.concatenate([inside.score, overall.score[rest]])[:TOP_LIST],
            np.full(min(TOP_LIST, inside.item_idx.size + int(rest.sum())), -1, np.int64),
        )
        with self._lock:
            if len(lists) > 512:  # a bounded number of categories per model
                for key in [key for key in lists if ":" in key]:
                    del lists[key]
            lists[name] = merged
        return merged


_top_lists = _TopLists()


# --- Owner state --------------------------------------------------------------------------------------------------


class OnlineStateLost(Exception):
    """Redis no longer holds the marker of a complete online state (events.keys.ONLINE_STATE_COMPLETE)."""


def queue_owner_state(pipe: Any, owners: Sequence[str]) -> None:
    for owner in owners:
        event_selectors.owner_state_queue(pipe, owner, history_limit=HISTORY_LIMIT)


def _history_of(entries: Sequence[event_selectors.HistoryEntry]) -> History:
    return History(
        np.fromiter((e.item_pk for e in entries), np.int64, len(entries)),
        np.fromiter((e.type for e in entries), np.int64, len(entries)),
        np.fromiter((e.ts for e in entries), np.float64, len(entries)),
    )


def load_history(owner: str, *, from_db: bool = False) -> History:
    """An owner's latest events, newest first: from Redis (Postgres when Redis is unavailable), or from Postgres."""
    if from_db:
        return _history_of(event_selectors.recent_history_from_db(owner, HISTORY_LIMIT))
    return _history_of(event_selectors.recent_history(owner, HISTORY_LIMIT))


@dataclass(frozen=True)
class OwnerRead:
    """What serving read of the request's owners: history merged over them (newest first), category affinities,
    where it came from ("redis", "postgres" (degraded) or "none" without an owner), their dismissed items (pks
    ascending, times), the arrival times of events no list has reflected yet (owner -> raw value) and what they
    already have (items bought or rated over their whole history: pks and the type of each, events.keys.had)."""

    history: History
    affinity: dict[int, float]
    source: str
    dismissed_pks: npt.NDArray[np.int64]
    dismissed_ts: npt.NDArray[np.float64]
    arrivals: dict[str, bytes]
    had_pks: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    had_types: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))


def _merged_had(
    parts: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Several owners' had items as one (a pair found under both owners twice: harmless, the stage unions them)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _merged_dismissed(
    parts: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    if len(parts) == 1:
        return parts[0]
    pks = np.concatenate([p[0] for p in parts])
    ts = np.concatenate([p[1] for p in parts])
    order = np.lexsort((-ts, pks))  # per pk, the latest dismissal first
    pks, ts = pks[order], ts[order]
    first = np.ones(pks.size, bool)
    first[1:] = pks[1:] != pks[:-1]
    return pks[first], ts[first]


def _from_replies(owners: Sequence[str], replies: Sequence[Any]) -> OwnerRead:
    histories: list[History] = []
    affinity: dict[int, float] = {}
    dismissed = []
    had = []
    arrivals: dict[str, bytes] = {}
    size = event_selectors.OWNER_STATE_REPLIES
    for n, owner in enumerate(owners):
        state = event_selectors.owner_state_parse(replies[n * size : (n + 1) * size])
        if not state.complete:
            raise OnlineStateLost
        histories.append(History(state.history.item_pk, state.history.type, state.history.ts))
        for category, weight in state.affinity.items():
            affinity[category] = affinity.get(category, 0.0) + weight
        dismissed.append((state.dismissed_pks, state.dismissed_ts))
        had.append((state.had_pks, state.had_types))
        if state.arrival is not None:
            arrivals[owner] = state.arrival
    history = histories[0] if len(histories) == 1 else History.merged(histories, HISTORY_LIMIT)
    pks, ts = _merged_dismissed(dismissed)
    had_pks, had_types = _merged_had(had)
    return OwnerRead(history, affinity, "redis", pks, ts, arrivals, had_pks, had_types)


def _from_db(owners: Sequence[str]) -> OwnerRead:
    histories = [load_history(owner, from_db=True) for owner in owners]
    history = histories[0] if len(histories) == 1 else History.merged(histories, HISTORY_LIMIT)
    pks, ts = _merged_dismissed([event_selectors.dismissed_from_db(owner) for owner in owners])
    had_pks, had_types = _merged_had([event_selectors.had_from_db(owner) for owner in owners])
    return OwnerRead(history, {}, "postgres", pks, ts, {}, had_pks, had_types)


def _watch_cluster_nodes() -> None:
    """A Redis Cluster master that restarted empty took the owners' state of its slots but not the completeness
    marker (it lives in one slot): its sentinel tells (events.online.node_sentinels_lost), and then the marker goes
    too, so serving reads from Postgres and asks for the rebuild, as after a whole Redis lost its data (found by a
    sixth tester, 5 December)."""
    try:
        lost = events_online.node_sentinels_lost()
        if lost:
            logger.error("online_state_node_lost", extra={"sentinels": lost})
            events_online.forget_completeness()
    except redis.RedisError:
        pass  # the requests meanwhile degrade by themselves


CLUSTER_NODE_WATCH = Periodic("cluster-node-watch", 5.0, _watch_cluster_nodes, at_exit=False)  # holds no work


def owner_state(owners: Sequence[str], prefetched: Sequence[Any] | None, redis_ok: bool) -> OwnerRead:
    """The online state of the request's owners (:class:`OwnerRead`).

    One path for every caller: the replies the cache's miss round trip prefetched, or (a debug request, a failed
    prefetch) the same reads in one round trip here. An online state Redis no longer marks complete (flushed,
    restarted empty) or Redis down: the history, dismissals and had items from Postgres, no affinities, degraded; a
    lost state also asks (once, whoever asks first) for the rebuild that restores it."""
    if not owners:
        empty = np.empty(0, np.int64)
        return OwnerRead(History.empty(), {}, "none", empty, np.empty(0, np.float64), {})
    if settings.REDIS_CLUSTER:
        CLUSTER_NODE_WATCH.ensure()
    if redis_ok and prefetched is None:
        try:
            pipe = redis_client.get().pipeline(transaction=False)
            queue_owner_state(pipe, owners)
            prefetched = pipe.execute()
        except redis.RedisError:
            logger.warning("owner_state_redis_unavailable", extra={"owner": owners[0]})
            DEGRADED.labels("redis").inc()
            redis_ok = False
    if redis_ok and prefetched is not None:
        try:
            return _from_replies(owners, prefetched)
        except OnlineStateLost:
            DEGRADED.labels("online_state").inc()
            event_services.online_state_rebuild_request()
    return _from_db(owners)


# --- Item attributes and online counters --------------------------------------------------------------------------


def attributes(pks: npt.NDArray[np.int64], now: float) -> tuple[ItemAttributes, bool]:
    """(the candidates' catalog attributes, fresh): from the item cache; ``fresh`` is False when Postgres could not
    be asked about the ones it did not hold."""
    a, fresh = _items.attributes(pks, now=now)
    return ItemAttributes(a.category, a.brand, a.available.copy(), a.price, a.created_ts), fresh


def item_pks(item_ids: Sequence[str]) -> npt.NDArray[np.int64]:
    """Catalog pks of external item ids (in-process; unknown ids are left out)."""
    return _items.pks_of(list(item_ids))


def context_of(item_id: str, category: str) -> tuple[int | None, int | None]:
    """The page context (item, category external ids) as pks; ids unknown to the catalog are dropped."""
    found = _items.pks_of([item_id]) if item_id else np.empty(0, np.int64)
    return (int(found[0]) if found.size else None), (category_pk(category) if category else None)


def global_lists(model: ActiveModel | None, context_category: int | None, *, left_out: int = 0) -> GlobalLists:
    """Newest arrivals, trending and popular (the page's category first) as catalog pks; without a model the
    recently popular fallback. Trending and popular reach ``left_out`` items past their quotas, so a list that leaves
    that many out still fills them (``stages.global_head``)."""
    new = new_arrivals()
    if model is None:
        popular = popular_fallback()
        fallback = retrieval.SourceHits(
            popular, np.linspace(1.0, 0.1, popular.size).astype(np.float32), np.full(popular.size, -1)
        )
        return GlobalLists(new, retrieval.SourceHits.empty(), fallback)
    popular = (
        _top_lists.popular_in_category(model, context_category)
        if context_category is not None
        else _top_lists.get(model, "popular")
    )
    return GlobalLists(
        new,
        _head(model, _top_lists.get(model, "trending"), QUOTAS["trending"] + left_out),
        _head(model, popular, QUOTAS["popular"] + left_out),
    )


def _head(model: ActiveModel, top: retrieval.SourceHits, quota: int) -> retrieval.SourceHits:
    """The first ``quota`` items of a top list, as catalog pks."""
    return to_pks(model, retrieval.SourceHits(top.item_idx[:quota], top.score[:quota], top.anchor[:quota]))


def clear() -> None:
    """Forget per-process caches (tests, and after a catalog rebuild)."""
    _items.clear()
    _recent.clear()
    opt_outs.clear()


# --- The ranker and the online counters ------------------------------------------------------------------------------

_RANKER_VERSIONS = 4  # the active, the one a hot swap leaves, two that experiment arms name
# Keyed by version and checksum, as the top lists: a database restored from a dump (or the tests' truncated one)
# numbers versions again, and a cached ranker or list of the old version 7 must not serve the new one.
_rankers: dict[tuple[int, str], ServingRanker | None] = {}
_rankers_lock = threading.Lock()
_NOT_LOADED = object()


def ranker_for(model: ActiveModel) -> ServingRanker | None:
    """The version's LambdaMART ranker, loaded once per process (and compiled to machine code in the background);
    None when the version has none (training ships it only when the pipeline with it beat the best single source
    on held-out users)."""
    key = (model.version_id, model.checksum)
    found = _rankers.get(key, _NOT_LOADED)
    if found is not _NOT_LOADED:
        return found
    with _rankers_lock:
        if key not in _rankers:
            ranker = None
            if model.has("ranker_model"):
                cache_dir = settings.COMPILED_RANKER_DIR
                ranker = ServingRanker(
                    booster_from_array(model.array("ranker_model")), Path(cache_dir) if cache_dir else None
                )
            # A few versions at most: during a hot swap, requests that started on the old model still finish with
            # its ranker (a clear() here made them fail with KeyError), and experiment arms may name other versions
            # (ranking.artifacts.PinnedModels) that take turns with the active one; older ones go with their models.
            for stale in list(_rankers)[: -(_RANKER_VERSIONS - 1)]:
                _rankers.pop(stale, None)
            _rankers[key] = ranker
        return _rankers[key]


def views_and_clicks(
    pks: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Each item's views and clicks over the last 24 hours, from the folded online features (in memory, re-read at
    most once a second); None when there are none yet."""
    features = event_selectors.item_online_features(poll_seconds=1.0)
    if features is None or features.item_pk.size == 0:
        return None
    rows = features.rows(pks)
    has = rows >= 0
    safe = np.maximum(rows, 0)
    views = np.where(has, features.views_24h[safe], 0).astype(np.float64)
    clicks = np.where(has, features.clicks_24h[safe], 0).astype(np.float64)
    return views, clicks


def ctr(pks: npt.NDArray[np.int64]) -> npt.NDArray[np.float32] | None:
    """Clicks per view over the last 24 hours from the online features; NaN where an item had no views."""
    counts = views_and_clicks(pks)
    return click_through_rate(counts[0].astype(np.float32), counts[1].astype(np.float32)) if counts else None


def exposure(
    model: ActiveModel | None, pks: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(exposure, clicks) per candidate, the counts exploration's Thompson sampling draws from: exposure is the
    customers who interacted with the item in the training data plus its views in the last 24 hours, clicks its
    clicks in the last 24 hours. Both from memory (the model's arrays and the folded online features, re-read at
    most once a second), never a round trip per item."""
    exposure = np.zeros(pks.size, np.float64)
    clicks = np.zeros(pks.size, np.float64)
    if model is not None and model.has("item_user_count"):
        idx = model.item_index(pks)
        exposure = np.where(idx >= 0, np.asarray(model.array("item_user_count"))[np.maximum(idx, 0)], 0.0)
    counts = views_and_clicks(pks)
    if counts is not None:
        exposure, clicks = exposure + counts[0], counts[1]
    return exposure, clicks


def item_cache_token() -> str:
    """The item cache's version token (part of the list-cache key: a catalog change is a new key)."""
    return _items.token()
