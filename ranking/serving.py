"""The recommendation service: what a storefront gets on every page view.

``recommend`` runs the pipeline of docs/architecture.md: experiment assignment → cache → history from the online
state → a fresh user vector (fold-in into the active ALS model) → retrieval from every source in one pass →
LambdaMART ranker (or the blended score) → re-ranking (availability, purchases, business rules, diversity,
exploration) → explanations. Catalog attributes of the candidates come from Postgres in one query; the online
state from Redis; the model from memory-mapped artifacts. Nothing here loops over items in Python except to
build the final response.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
from django.conf import settings
from django.db import DatabaseError
from prometheus_client import Counter, Histogram

from catalog import selectors as catalog_selectors
from catalog.selectors import ItemRow
from catalog.services import OPT_OUT_VERSION_KEY
from events import selectors as event_selectors
from events import services as event_services
from events.keys import owner_for
from events.models import Interaction
from experiments import services as experiments
from experiments.config import VariantConfig
from ranking import offline_pipeline, retrieval, rules
from ranking import rerank as rr
from ranking.arrays import isin
from ranking.artifacts import ActiveModel, get_active_model
from ranking.cache import ListCache
from ranking.compiled_ranker import ServingRanker
from ranking.item_cache import ItemCache
from ranking.offline_pipeline import booster_from_array
from ranking.ranker import FEATURE_NAMES, blend_scores, build_features, candidate_context, click_through_rate
from recsys import redis_client

logger = logging.getLogger(__name__)

MAX_COUNT = 100
CACHE = ListCache(ttl_seconds=60.0)

# History length, anchors, their recency weights and each source's candidate quota (a few hundred in all) are
# defined once, in ranking.offline_pipeline: the ranker is trained and evaluated on exactly what is served.
HISTORY_LIMIT = offline_pipeline.HISTORY_LIMIT
ANCHORS = offline_pipeline.ANCHORS
ANCHOR_DECAY = offline_pipeline.ANCHOR_DECAY
QUOTAS = offline_pipeline.QUOTAS

REQUESTS = Counter(
    "recsys_recommendation_requests_total", "Recommendation requests.", ["endpoint", "surface", "variant", "cache"]
)
LATENCY = Histogram(
    "recsys_recommendation_latency_seconds", "Recommendation latency inside the service.",
    ["endpoint", "surface", "variant"],
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)  # fmt: skip
STAGE = Histogram(
    "recsys_pipeline_stage_seconds", "Time per pipeline stage.", ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)  # fmt: skip
DEGRADED = Counter("recsys_degraded_responses_total", "Responses served in a degraded mode.", ["reason"])
CATEGORY_SHARE = Histogram(
    "recsys_list_max_category_share", "Share of the most frequent category in each served list.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)  # fmt: skip

VERBS = {
    Interaction.Type.VIEW: "viewed", Interaction.Type.CLICK: "viewed", Interaction.Type.ADD_TO_CART: "added",
    Interaction.Type.PURCHASE: "bought", Interaction.Type.RATING: "rated",
}  # fmt: skip


class UnknownItem(LookupError):
    """The item id names no item in the catalog."""


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    title: str
    category: str | None
    price: float | None
    score: float
    reason: Reason
    sources: tuple[str, ...]


@dataclass(frozen=True)
class RecommendationList:
    request_id: str
    surface: str
    items: tuple[RecommendedItem, ...]
    experiment: str | None = None
    variant: str | None = None
    model_version: int | None = None
    degraded: bool = False
    cache: str = "miss"
    debug: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The response body's shape; built field by field (``dataclasses.asdict`` deep-copies, which costs more
        than the rest of a cached request)."""
        return {
            "request_id": self.request_id, "surface": self.surface,
            "items": [
                {
                    "item_id": item.item_id, "title": item.title, "category": item.category, "price": item.price,
                    "score": item.score, "reason": {"code": item.reason.code, "text": item.reason.text},
                    "sources": list(item.sources),
                }
                for item in self.items
            ],
            "experiment": self.experiment, "variant": self.variant, "model_version": self.model_version,
            "degraded": self.degraded, "cache": self.cache, "debug": self.debug,
        }  # fmt: skip


# --- Stage timing -----------------------------------------------------------------------------------------


class _Trace:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stages: dict[str, float] = {}
        self.data: dict[str, Any] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            STAGE.labels(name).observe(elapsed)
            self.stages[name] = round(elapsed * 1000, 3)


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
    second) and at least once a minute. Until the first load succeeds (Postgres down at start-up) everyone counts
    as opted out: a non-personal list is the privacy-safe answer. A failed reload keeps the last complete set,
    which stays right because an opt-out cannot be recorded while Postgres is down.
    """

    def __init__(self, *, check_seconds: float = 0.5, max_age_seconds: float = 60.0) -> None:
        self.check_seconds = check_seconds
        self.max_age_seconds = max_age_seconds
        self._ids: frozenset[str] | None = None
        self._token: bytes | None = None
        self._checked = -math.inf
        self._loaded_at = -math.inf
        self._lock = threading.Lock()

    def contains(self, customer_id: str) -> bool:
        now = time.monotonic()
        if now - self._checked >= self.check_seconds and self._lock.acquire(blocking=self._ids is None):
            try:
                self._refresh(now)
            finally:
                self._lock.release()
        ids = self._ids
        return True if ids is None else customer_id in ids

    def _refresh(self, now: float) -> None:
        self._checked = now
        try:
            token: bytes | None = redis_client.get().get(OPT_OUT_VERSION_KEY) or b"0"
        except redis.RedisError:
            token = None  # unknown: reload from Postgres on every check
        if (
            self._ids is not None and token is not None and token == self._token
            and now - self._loaded_at < self.max_age_seconds
        ):  # fmt: skip
            return
        try:
            self._ids = catalog_selectors.opted_out_customer_ids()
        except DatabaseError:
            logger.warning("opt_outs_unreadable", exc_info=True)
            return
        self._token, self._loaded_at = token, now

    def clear(self) -> None:
        with self._lock:
            self._ids, self._token = None, None
            self._checked = self._loaded_at = -math.inf


_opt_outs = _OptOuts()


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


def _new_arrivals() -> npt.NDArray[np.int64]:
    def load() -> npt.NDArray[np.int64]:
        return np.array(catalog_selectors.newest_available_item_pks(limit=QUOTAS["new"]), np.int64)

    return _recent.get("new", load, np.empty(0, np.int64))


def _category_pk(category: str) -> int | None:
    return _recent.get(f"category:{category}", lambda: catalog_selectors.category_pk(external_id=category))


def _popular_fallback() -> npt.NDArray[np.int64]:
    """Without a model: the most interacted-with items of late."""

    def load() -> npt.NDArray[np.int64]:
        return np.array(event_selectors.recently_popular_item_pks(), np.int64)

    return _recent.get("popular_fallback", load, np.empty(0, np.int64))


# --- Model-side helpers -----------------------------------------------------------------------------------


class _TopLists:
    """Popular and trending top lists per loaded model, computed once instead of per request."""

    def __init__(self) -> None:
        self._key: tuple[int, float | None] | None = None
        self._lists: dict[str, retrieval.SourceHits] = {}
        self._lock = threading.Lock()

    def get(self, model: ActiveModel, name: str) -> retrieval.SourceHits:
        key = (model.version_id, model.trending_computed_at)
        if self._key != key:
            with self._lock:
                if self._key != key:
                    self._lists = {
                        "popular": retrieval.top_k(np.asarray(model.popularity), 1000),
                        "trending": retrieval.top_k(np.asarray(model.trending), 1000),
                    }
                    self._key = key
        return self._lists[name]

    def popular_in_category(self, model: ActiveModel, category_pk: int) -> retrieval.SourceHits:
        """The popular list with ``category_pk``'s items first (a page's category as a retrieval anchor), then the
        rest of the catalog's popular items; computed once per model and category."""
        name = f"popular:{category_pk}"
        lists = self._lists if self._key == (model.version_id, model.trending_computed_at) else None
        found = lists.get(name) if lists is not None else None
        if found is not None:
            return found
        overall = self.get(model, "popular")
        popularity = np.asarray(model.popularity)
        inside = retrieval.top_k(popularity, 1000, exclude=np.asarray(model.array("item_category")) != category_pk)
        rest = ~np.isin(overall.item_idx, inside.item_idx)
        merged = retrieval.SourceHits(
            np.concatenate([inside.item_idx, overall.item_idx[rest]])[:1000],
            np.concatenate([inside.score, overall.score[rest]])[:1000],
            np.full(min(1000, inside.item_idx.size + int(rest.sum())), -1, np.int64),
        )
        with self._lock:
            if len(self._lists) > 512:  # a bounded number of categories per model
                self._lists = {key: value for key, value in self._lists.items() if ":" not in key}
            self._lists[name] = merged
        return merged


_top_lists = _TopLists()


def _to_pks(model: ActiveModel, hits: retrieval.SourceHits) -> retrieval.SourceHits:
    """Model indices → catalog primary keys, the ids every later stage speaks."""
    ids = model.item_ids
    valid = hits.item_idx >= 0
    anchors = np.where(hits.anchor >= 0, ids[np.maximum(hits.anchor, 0)], -1)
    return retrieval.SourceHits(ids[hits.item_idx[valid]], hits.score[valid], anchors[valid])


@dataclass
class _History:
    pks: npt.NDArray[np.int64]  # newest first
    types: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]

    @classmethod
    def load(cls, owner: str, *, from_db: bool = False) -> _History:
        if from_db:
            return cls.of(event_selectors.recent_history_from_db(owner, HISTORY_LIMIT))
        return cls.of(event_selectors.recent_history(owner, HISTORY_LIMIT))

    @classmethod
    def empty(cls) -> _History:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))

    @classmethod
    def of(cls, entries: Sequence[event_selectors.HistoryEntry]) -> _History:
        return cls(
            np.fromiter((e.item_pk for e in entries), np.int64, len(entries)),
            np.fromiter((e.type for e in entries), np.int64, len(entries)),
            np.fromiter((e.ts for e in entries), np.float64, len(entries)),
        )

    @classmethod
    def merged(cls, histories: Sequence[_History], limit: int) -> _History:
        """Several owners' histories as one, newest first."""
        ts = np.concatenate([h.ts for h in histories])
        order = np.argsort(-ts, kind="stable")[:limit]
        return cls(
            np.concatenate([h.pks for h in histories])[order],
            np.concatenate([h.types for h in histories])[order],
            ts[order],
        )

    def purchased(self) -> npt.NDArray[np.int64]:
        return np.unique(self.pks[self.types == Interaction.Type.PURCHASE])

    def anchors(self, limit: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The latest ``limit`` distinct items (newest first) and the event type that made each an anchor."""
        _, first = np.unique(self.pks, return_index=True)
        order = np.sort(first)[:limit]
        return self.pks[order], self.types[order]


def _user_vector(model: ActiveModel, history: _History, now: float) -> npt.NDArray[np.float32] | None:
    if not history.pks.size or not model.has("als_item_factors"):
        return None
    idx = model.item_index(history.pks)
    if not (idx >= 0).any():
        return None
    values = np.zeros(idx.size, np.float64)
    items, confidences = model.history_confidences(idx, history.types, values, (now - history.ts) / 86_400)
    if items.size == 0:
        return None
    return model.fold_in(items, confidences)


def _neighbour_source(
    model: ActiveModel, prefix: str, anchors_idx: npt.NDArray[np.int64], k: int
) -> retrieval.SourceHits:
    if not model.has(f"{prefix}_idx") or anchors_idx.size == 0:
        return retrieval.SourceHits.empty()
    weights = offline_pipeline.anchor_weights(anchors_idx.size)
    return retrieval.neighbours(anchors_idx, weights, model.array(f"{prefix}_idx"), model.array(f"{prefix}_score"), k)


def _retrieve(
    model: ActiveModel | None,
    history: _History,
    user_vector: npt.NDArray[np.float32] | None,
    surface: str,
    context_category: int | None = None,
) -> dict[str, retrieval.SourceHits]:
    """Every source's hits, as catalog pks."""
    hits: dict[str, retrieval.SourceHits] = {}
    new = _new_arrivals()
    hits["new"] = retrieval.SourceHits(new, np.linspace(1.0, 0.5, new.size).astype(np.float32), np.full(new.size, -1))
    if model is None:
        popular = _popular_fallback()
        hits["popular"] = retrieval.SourceHits(
            popular, np.linspace(1.0, 0.1, popular.size).astype(np.float32), np.full(popular.size, -1)
        )
        return hits
    anchor_pks, _ = history.anchors(ANCHORS)
    anchor_idx = model.item_index(anchor_pks)
    anchor_idx = anchor_idx[anchor_idx >= 0]
    if user_vector is not None and model.index is not None:
        idx, scores = model.search(user_vector, QUOTAS["ann"])
        keep = idx >= 0
        hits["ann"] = _to_pks(model, retrieval.SourceHits(idx[keep], scores[keep], np.full(int(keep.sum()), -1)))
    for source, prefix in offline_pipeline.NEIGHBOUR_TABLES:
        k = offline_pipeline.fbt_quota(surface) if source == "fbt" else QUOTAS[source]
        hits[source] = _to_pks(model, _neighbour_source(model, prefix, anchor_idx, k))
    for source in ("trending", "popular"):
        top = _top_lists.get(model, source)
        if source == "popular" and context_category is not None:
            top = _top_lists.popular_in_category(model, context_category)
        quota = QUOTAS[source]
        hits[source] = _to_pks(model, retrieval.SourceHits(top.item_idx[:quota], top.score[:quota], top.anchor[:quota]))
    return hits


# --- Explanations -----------------------------------------------------------------------------------------


NEIGHBOUR_SOURCES = frozenset({"item_knn", "ease", "content"})


def _reason(
    source: str,
    sources: tuple[str, ...],
    anchor: int,
    row: ItemRow,
    rows: Mapping[int, ItemRow],
    anchor_types: Mapping[int, int],
    pinned: bool,
    explored: bool,
) -> Reason:
    if pinned:
        return Reason("featured", "Featured")
    if explored:
        return Reason("discover", "Something new to discover")
    anchor_row = rows.get(anchor) if anchor >= 0 else None
    if anchor_row is not None:
        if "fbt" in sources and not NEIGHBOUR_SOURCES.intersection(sources):
            return Reason("bought_together", f"Frequently bought with {anchor_row.title}")
        verb = VERBS.get(anchor_types.get(anchor, Interaction.Type.VIEW), "viewed")
        return Reason(f"because_you_{verb}", f"Because you {verb} {anchor_row.title}")
    if source == "trending" and row.category_name:
        return Reason("trending", f"Trending in {row.category_name}")
    if source == "trending":
        return Reason("trending", "Trending now")
    if source == "ann":
        return Reason("for_you", "Picked for your taste")
    if source == "new":
        return Reason("new_arrival", "New arrival")
    if source == "popular" and row.category_name:
        return Reason("popular", f"Popular in {row.category_name}")
    return Reason("popular", "Popular")


# --- The pipeline -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecommendRequest:
    customer_id: str = ""
    session_id: str = ""
    surface: str = "home"
    count: int = 10
    category: str | None = None
    exclude: tuple[str, ...] = ()
    debug: bool = False
    forced_variant: str | None = None
    # Where the visitor is: the item on the page and the page's category (external ids; unknown ids are ignored).
    # Soft signals, never filters: the item becomes the newest history anchor (and is itself left out of the list),
    # the category a fresh interest that also puts its popular items first among the popular candidates.
    context_item_id: str = ""
    context_category: str = ""
    rules: bool = True  # False: the merchandiser's "rules off" preview
    log_impression: bool = True  # previews are not traffic


_config_keys: dict[int, tuple[VariantConfig, str]] = {}


def _config_key(config: VariantConfig) -> str:
    """A short digest of the config, part of the list-cache key. Configs live in the experiments snapshot, so it is
    remembered per config object (kept alive beside its digest, so its id cannot be reused)."""
    known = _config_keys.get(id(config))
    if known is not None and known[0] is config:
        return known[1]
    digest = hashlib.blake2b(repr(sorted(asdict(config).items())).encode(), digest_size=6).hexdigest()
    if len(_config_keys) > 256:
        _config_keys.clear()
    _config_keys[id(config)] = (config, digest)
    return digest


def recommend(request: RecommendRequest) -> RecommendationList:
    """A personalised list for a customer, an anonymous session, or nobody (cold start); never an error for an
    unknown customer. Opted-out customers get the same list as an anonymous visitor."""
    started = time.perf_counter()
    opted_out = bool(request.customer_id) and _opt_outs.contains(request.customer_id)
    personal = not opted_out
    owner = owner_for(customer_id=request.customer_id, session_id=request.session_id) if personal else ""
    if owner == "s:":
        owner = ""
    # A customer who browsed anonymously before signing up: the session's history is theirs too (until a session
    # merge moves it over), read in the same round trip as the customer's own.
    owners = tuple(o for o in (owner,) if o)
    if owner and request.customer_id and request.session_id:
        owners = (owner, owner_for(customer_id="", session_id=request.session_id))
    unit = owner or request.session_id or request.customer_id or "anonymous"
    assignment = experiments.assign(surface=request.surface, unit_id=unit, forced_variant=request.forced_variant)
    config = assignment.config
    if not request.rules:
        config = dataclasses.replace(config, rules_enabled=False)
    model = get_active_model()
    model_version = model.version_id if model else None
    request_id = uuid.uuid4().hex

    def compute(prefetched: Sequence[Any] | None, redis_ok: bool = True) -> dict[str, Any]:
        return _compute(request, owners, config, model, assignment.variant, request_id, redis_ok, prefetched)

    value: dict[str, Any] | None = None
    tier = "bypass"
    redis_ok = True
    if not request.debug:
        # The exclusions and the page context, digested: free-form ids must not bend the key's shape.
        extra_key = hashlib.blake2b(
            "\x1e".join(("\x1f".join(sorted(request.exclude)), request.context_item_id, request.context_category))
            .encode(), digest_size=6,
        ).hexdigest()  # fmt: skip
        key = ":".join((
            "rec", request.surface, "|".join(owners) or "-", str(request.count), request.category or "-", extra_key,
            assignment.variant or "-", _config_key(config), str(model_version), rules.version_token(),
            str(rules.next_edge(now=time.time())), _items.token(),
        ))  # fmt: skip
        try:
            value, tier = CACHE.get_or_compute(
                key, compute,
                version_key=[event_selectors.cache_version_key(o) for o in owners] or None,
                prefetch=(lambda pipe: _queue_owner_state(pipe, owners)) if owners else None,
            )  # fmt: skip
        except redis.RedisError:
            # Without Redis there is no cache version, so no cache to trust: compute from Postgres and say so.
            redis_ok = False
            DEGRADED.labels("redis").inc()
            logger.warning("recommend_without_redis", extra={"owner": owner})
    if value is None:
        value = compute(None, redis_ok)
    result = _from_cached(value, request_id=request_id, cache=tier)
    if request.log_impression and redis_ok:
        experiments.impression_log(
            request_id=request_id, surface=request.surface, customer_id=request.customer_id if personal else "",
            session_id=request.session_id, assignment=assignment, item_pks=value["item_pks"],
            model_version=model_version, latency_ms=(time.perf_counter() - started) * 1000,
        )  # fmt: skip
    variant = assignment.variant or "-"
    REQUESTS.labels("recommendations", request.surface, variant, tier).inc()
    LATENCY.labels("recommendations", request.surface, variant).observe(time.perf_counter() - started)
    return RecommendationList(
        request_id=request_id, surface=request.surface, items=result.items, experiment=assignment.experiment_key,
        variant=assignment.variant, model_version=model_version, degraded=result.degraded, cache=tier,
        debug=result.debug,
    )  # fmt: skip


def _from_cached(value: dict[str, Any], *, request_id: str, cache: str) -> RecommendationList:
    items = tuple(
        RecommendedItem(**{**item, "reason": Reason(**item["reason"]), "sources": tuple(item["sources"])})
        for item in value["items"]
    )
    return RecommendationList(
        request_id=request_id, surface=value["surface"], items=items, degraded=value["degraded"], cache=cache,
        debug=value.get("debug"),
    )  # fmt: skip


class OnlineStateLost(Exception):
    """Redis no longer holds the marker of a complete online state (events.keys.ONLINE_STATE_COMPLETE)."""


def _queue_owner_state(pipe: Any, owners: Sequence[str]) -> None:
    for owner in owners:
        event_selectors.owner_state_queue(pipe, owner, history_limit=HISTORY_LIMIT)


def _owner_state(
    owners: Sequence[str], prefetched: Sequence[Any] | None, redis_ok: bool
) -> tuple[_History, Mapping[int, float]]:
    """The history (newest first, merged over ``owners``) and category affinities of the request's owners."""
    if not owners:
        return _History.empty(), {}
    histories: list[_History] = []
    affinity: dict[int, float] = {}
    for n, owner in enumerate(owners):
        if prefetched is not None:
            size = event_selectors.OWNER_STATE_REPLIES
            state = event_selectors.owner_state_parse(prefetched[n * size : (n + 1) * size])
            if not state.complete:
                raise OnlineStateLost
            histories.append(_History(state.history.item_pk, state.history.type, state.history.ts))
            part: Mapping[int, float] = state.affinity
        else:
            histories.append(_History.load(owner, from_db=not redis_ok))
            part = event_selectors.category_affinity(owner) if redis_ok else {}
        for category, weight in part.items():
            affinity[category] = affinity.get(category, 0.0) + weight
    if len(histories) == 1:
        return histories[0], affinity
    return _History.merged(histories, HISTORY_LIMIT), affinity


# A page's category counts as this much fresh interest: one view's worth (events.features.INTEREST_WEIGHTS), so it
# decides a visitor's first list and only nudges a long history.
CONTEXT_CATEGORY_WEIGHT = 1.0


@dataclass(frozen=True)
class _Context:
    item_pk: int | None = None
    category_pk: int | None = None


def _context_of(request: RecommendRequest) -> _Context:
    """The request's page context as primary keys (in-process lookups; ids unknown to the catalog are dropped)."""
    if not (request.context_item_id or request.context_category):
        return _Context()
    found = _items.pks_of([request.context_item_id]) if request.context_item_id else np.empty(0, np.int64)
    return _Context(
        item_pk=int(found[0]) if found.size else None,
        category_pk=_category_pk(request.context_category) if request.context_category else None,
    )


def _with_context(
    context: _Context, history: _History, affinity: Mapping[int, float], now: float
) -> tuple[_History, Mapping[int, float]]:
    """The page's item as the newest view and its category as a fresh interest: retrieval, the user vector and the
    ranker's features then see them like a real view, while nothing is written to the visitor's history."""
    if context.item_pk is not None:
        history = _History(
            np.concatenate([[context.item_pk], history.pks]).astype(np.int64),
            np.concatenate([[Interaction.Type.VIEW], history.types]).astype(np.int64),
            np.concatenate([[now], history.ts]),
        )
    if context.category_pk is not None:
        affinity = {**affinity, context.category_pk: affinity.get(context.category_pk, 0.0) + CONTEXT_CATEGORY_WEIGHT}
    return history, affinity


def _compute(
    request: RecommendRequest,
    owners: tuple[str, ...],
    config: VariantConfig,
    model: ActiveModel | None,
    variant: str | None,
    request_id: str,
    redis_ok: bool,
    prefetched: Sequence[Any] | None,
) -> dict[str, Any]:
    """The list itself. ``prefetched``: the owner's online state as read by the cache's miss round trip (None:
    read it here)."""
    trace = _Trace(request.debug)
    now = time.time()
    owner = owners[0] if owners else ""
    degraded = model is None or not redis_ok
    if model is None:
        DEGRADED.labels("no_model").inc()
    with trace.stage("history"):
        try:
            history, affinity = _owner_state(owners, prefetched, redis_ok)
        except OnlineStateLost:
            # Redis lost the online state (flushed, restarted empty): histories from Postgres, as when it is down,
            # until the rebuild asked for here (once, whoever asks first) has restored it.
            history, affinity = _owner_state(owners, None, redis_ok=False)
            degraded = True
            DEGRADED.labels("online_state").inc()
            event_services.online_state_rebuild_request()
        context = _context_of(request)
        history, affinity = _with_context(context, history, affinity, now)
    with trace.stage("user_vector"):
        user_vector = _user_vector(model, history, now) if model is not None else None
    with trace.stage("retrieval"):
        hits = _retrieve(model, history, user_vector, request.surface, context.category_pk)
        candidates = retrieval.merge(hits)
        pin_rules = rules.active_rules(surface=request.surface, now=now) if config.rules_enabled else ()
        pinned_pks = np.array([r.target_value for r in pin_rules if r.kind == "pin"], np.int64)
        missing_pins = pinned_pks[~isin(pinned_pks, candidates.item_idx)]
        if missing_pins.size:
            # Pinned items join the candidates so the re-ranker can place them (it never invents items).
            hits["pinned"] = retrieval.SourceHits(
                missing_pins, np.zeros(missing_pins.size, np.float32), np.full(missing_pins.size, -1)
            )
            candidates = retrieval.merge(hits)
    anchor_pks, anchor_types = history.anchors(ANCHORS)
    cand = candidates.item_idx  # sorted, unique
    with trace.stage("catalog"):
        attributes, fresh = _items.attributes(cand, now=now)
        if not fresh:  # some candidates could not be looked up: Postgres is unreachable
            DEGRADED.labels("postgres").inc()
            degraded = True
    category, brand, price, created = attributes.category, attributes.brand, attributes.price, attributes.created_ts
    available = attributes.available.copy()
    if request.category:
        wanted = _category_pk(request.category)
        available &= category == (wanted if wanted is not None else -2)
    with trace.stage("ranking"):
        scores, ranker_engine = _score(
            model, candidates, config, user_vector, history, affinity, category, price, created, now
        )
    with trace.stage("rerank"):
        exclude = _excluded(request, config, history)
        if context.item_pk is not None:  # the item on the page is not recommended to its own viewer
            exclude = np.union1d(exclude, [context.item_pk])
        # Exposure and clicks matter only to exploration: skipped when it is off.
        exposure, clicks = _exposure(model, cand) if config.exploration_share > 0 else (np.zeros(cand.size), None)
        # Greedy with no cap to enforce is plain score order, and "off" gets there without the slot loop.
        plain = config.diversity == "greedy" and config.diversity_cap >= 1 and config.max_per_brand is None
        diversity = "off" if plain else config.diversity
        result = rr.rerank(
            rr.Candidates(
                item_idx=cand, score=scores.astype(np.float64), category=category, brand=brand, available=available,
                exposure=exposure, clicks=clicks,
            ),
            pin_rules,
            rr.RerankConfig(
                count=request.count, max_category_share=config.diversity_cap, max_per_brand=config.max_per_brand,
                exclude_idx=exclude, exploration_share=config.exploration_share,
                seed=int(hashlib.blake2b(f"{owner}:{request_id}".encode(), digest_size=4).hexdigest(), 16),
                diversity=diversity, mmr_lambda=config.mmr_lambda, exploration=config.exploration,  # type: ignore[arg-type]
            ),
        )  # fmt: skip
    with trace.stage("explain"):
        final_pos = np.searchsorted(cand, result.item_idx)
        final_anchors = candidates.anchor[final_pos]
        rows = _items.rows([*result.item_idx.tolist(), *final_anchors[final_anchors >= 0].tolist()])
        anchor_type = dict(zip(anchor_pks.tolist(), anchor_types.tolist(), strict=True))
        items = []
        for slot, (pk, i) in enumerate(zip(result.item_idx.tolist(), final_pos.tolist(), strict=True)):
            row = rows.get(pk)
            if row is None:  # evicted from memory while Postgres is down: nothing to show for it
                continue
            found = candidates.source_rank[i] < retrieval.NO_RANK
            sources = tuple(name for name, hit in zip(retrieval.SOURCES, found.tolist(), strict=True) if hit)
            reason = _reason(
                retrieval.SOURCES[int(candidates.best_source[i])] if sources else "pinned", sources,
                int(candidates.anchor[i]), row, rows, anchor_type, bool(result.pinned[slot]),
                bool(result.explored[slot]),
            )  # fmt: skip
            items.append({
                "item_id": row.item_id, "title": row.title, "category": row.category, "price": row.price,
                "score": round(float(result.score[slot]), 6), "reason": {"code": reason.code, "text": reason.text},
                "sources": list(sources) or ["pinned"],
            })  # fmt: skip
    if items:
        shares = np.unique(category[final_pos], return_counts=True)[1]
        CATEGORY_SHARE.observe(float(shares.max() / final_pos.size))
    value: dict[str, Any] = {
        "surface": request.surface, "items": items, "item_pks": [pk for pk in result.item_idx.tolist() if pk in rows],
        "degraded": degraded,
    }  # fmt: skip
    if request.debug:
        top = np.argsort(-scores)[:20]
        top_rows = _items.rows(cand[top].tolist())
        value["debug"] = {
            "stages_ms": trace.stages,
            "candidates_per_source": candidates.per_source_counts(),
            "candidates": int(cand.size),
            "ranker": "lambdamart" if ranker_engine else "blend",
            "ranker_engine": ranker_engine,  # lleaves (compiled), lightgbm (until compiled), None: the blend
            "diversity": diversity,
            "context": {"item": context.item_pk is not None, "category": context.category_pk is not None},
            "dropped": dict(result.dropped),
            "rules_fired": sorted({rule for fired in result.fired for rule in fired}),
            "skipped_pins": list(result.skipped_pins),
            "history_length": int(history.pks.size),
            "top_scores": [
                {"item_id": top_rows[pk].item_id, "score": round(float(score), 6)}
                for pk, score in zip(cand[top].tolist(), scores[top].tolist(), strict=True)
                if pk in top_rows
            ],
            "variant": variant,
        }
    return value


def _score(
    model: ActiveModel | None,
    candidates: retrieval.CandidateSet,
    config: VariantConfig,
    user_vector: npt.NDArray[np.float32] | None,
    history: _History,
    affinity: Mapping[int, float],
    category: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    created: npt.NDArray[np.float64],
    now: float,
) -> tuple[npt.NDArray[np.float32], str | None]:
    """LambdaMART scores when the version has a ranker and the config wants it, else the blended score; and the
    engine that computed them (None: the blend)."""
    ranker = _ranker_for(model) if (model is not None and config.ranker) else None
    if ranker is None:
        return blend_scores(candidates, config.blend_weights), None
    last_category = -1
    if history.pks.size:
        last = model.item_index(history.pks[:1])[0]
        last_category = int(model.array("item_category")[last]) if last >= 0 else -1
    # The same definition the ranker's training rows were built with (ranking.offline_pipeline).
    context = candidate_context(
        model_idx=model.item_index(candidates.item_idx), popularity=model.popularity, trend=model.trending,
        category=category, price=price, created_ts=created, now=now,
        item_factors=model.array("als_item_factors") if model.has("als_item_factors") else None,
        user_vector=user_vector, ctr=_ctr(candidates.item_idx), category_affinity=affinity,
        history_ids=history.anchors(HISTORY_LIMIT)[0], last_category=last_category,
    )  # fmt: skip
    X = build_features(candidates, context)
    assert X.shape[1] == len(FEATURE_NAMES)
    return ranker.score(X), ranker.engine


_rankers: dict[int, ServingRanker | None] = {}
_rankers_lock = threading.Lock()
_NOT_LOADED = object()


def _ranker_for(model: ActiveModel) -> ServingRanker | None:
    """The version's LambdaMART ranker, loaded once per process (and compiled to machine code in the background);
    None when the version has none (training ships it only when the pipeline with it beat the best single source
    on held-out users)."""
    found = _rankers.get(model.version_id, _NOT_LOADED)
    if found is not _NOT_LOADED:
        return found
    with _rankers_lock:
        if model.version_id not in _rankers:
            ranker = None
            if model.has("ranker_model"):
                cache_dir = settings.COMPILED_RANKER_DIR
                ranker = ServingRanker(
                    booster_from_array(model.array("ranker_model")), Path(cache_dir) if cache_dir else None
                )
            # Two versions at most: during a hot swap, requests that started on the old model still finish with
            # its ranker (a clear() here made them fail with KeyError); older ones go with their models.
            for stale in list(_rankers)[:-1]:
                _rankers.pop(stale, None)
            _rankers[model.version_id] = ranker
        return _rankers[model.version_id]


def _views_and_clicks(
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


def _ctr(pks: npt.NDArray[np.int64]) -> npt.NDArray[np.float32] | None:
    """Clicks per view over the last 24 hours from the online features; NaN where an item had no views."""
    counts = _views_and_clicks(pks)
    return click_through_rate(counts[0].astype(np.float32), counts[1].astype(np.float32)) if counts else None


def _exposure(
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
    counts = _views_and_clicks(pks)
    if counts is not None:
        exposure, clicks = exposure + counts[0], counts[1]
    return exposure, clicks


def _excluded(request: RecommendRequest, config: VariantConfig, history: _History) -> npt.NDArray[np.int64]:
    """Purchased items (when the surface says so) and the request's ``exclude`` ids."""
    exclude = history.purchased() if config.exclude_purchased else np.empty(0, np.int64)
    if request.exclude:
        exclude = np.union1d(exclude, _items.pks_of(request.exclude))
    return exclude


def clear_caches() -> None:
    """Forget per-process caches (tests, and after a catalog rebuild)."""
    CACHE.clear_local()
    _items.clear()
    _recent.clear()
    _opt_outs.clear()


def safe_round(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 6)


__all__ = [
    "RecommendRequest", "RecommendationList", "RecommendedItem", "Reason", "UnknownItem", "recommend",
    "catalog_rows", "item_pk", "clear_caches", "DatabaseError",
]  # fmt: skip


# --- Item-anchored lists ----------------------------------------------------------------------------------

# Collaborative neighbours carry the "people who liked this also liked" signal; content keeps cold items covered.
SIMILAR_BLEND = (("knn", "item_knn", 0.45), ("ease", "ease", 0.35), ("content", "content", 0.20))


def _neighbour_lists(
    model: ActiveModel | None, pks: npt.NDArray[np.int64], tables: Sequence[tuple[str, str, float]], k: int
) -> dict[str, retrieval.SourceHits]:
    """Per source, the weighted neighbours of ``pks`` (each source's scores scaled to a maximum of its weight)."""
    hits: dict[str, retrieval.SourceHits] = {}
    if model is None:
        return hits
    idx = model.item_index(pks)
    idx = idx[idx >= 0]
    for prefix, source, weight in tables:
        found = _to_pks(model, _neighbour_source(model, prefix, idx, k))
        if len(found):
            top = float(found.score.max()) or 1.0
            hits[source] = retrieval.SourceHits(found.item_idx, found.score / top * weight, found.anchor)
    return hits


def _item_list(
    *,
    endpoint: str,
    surface: str,
    anchor_pk: int,
    hits: dict[str, retrieval.SourceHits],
    count: int,
    reason_for: Any,
    exclude: npt.NDArray[np.int64] | None = None,
) -> tuple[list[RecommendedItem], npt.NDArray[np.int64]]:
    """Merge, fetch attributes, drop unavailable/excluded/blocked items, apply rules, explain."""
    candidates = retrieval.merge(hits)
    summed = candidates.source_score.sum(axis=1)
    cand = candidates.item_idx  # sorted, unique
    attributes, _ = _items.attributes(cand, now=time.time())
    result = rr.rerank(
        rr.Candidates(
            item_idx=cand, score=summed.astype(np.float64), category=attributes.category, brand=attributes.brand,
            available=attributes.available, exposure=np.zeros(cand.size),
        ),
        rules.active_rules(surface=surface, now=time.time()),
        rr.RerankConfig(
            count=count, diversity="off",
            exclude_idx=np.union1d(exclude if exclude is not None else np.empty(0, np.int64), [anchor_pk]),
        ),
    )  # fmt: skip
    rows = _items.rows([anchor_pk, *result.item_idx.tolist()])
    anchor = rows[anchor_pk]
    items = []
    shown = []
    for slot, (pk, i) in enumerate(
        zip(result.item_idx.tolist(), np.searchsorted(cand, result.item_idx).tolist(), strict=True)
    ):
        row = rows.get(pk)
        if row is None:  # evicted from memory while Postgres is down: nothing to show for it
            continue
        shown.append(pk)
        found = candidates.source_rank[i] < retrieval.NO_RANK
        sources = tuple(name for name, hit in zip(retrieval.SOURCES, found.tolist(), strict=True) if hit)
        reason = Reason("featured", "Featured") if result.pinned[slot] else reason_for(anchor, sources)
        items.append(
            RecommendedItem(
                row.item_id,
                row.title,
                row.category,
                row.price,
                round(float(result.score[slot]), 6),
                reason,
                sources or ("pinned",),
            )
        )
    return items, np.asarray(shown, np.int64)


def _similar_reason(anchor: ItemRow, sources: tuple[str, ...]) -> Reason:
    if sources == ("content",):
        return Reason("similar_content", f"Similar to {anchor.title}")
    if "popular" in sources and len(sources) == 1:
        return Reason("popular_in_category", f"Popular in {anchor.category_name or 'the shop'}")
    return Reason("similar", f"Customers who liked {anchor.title} also liked")


def _bought_together_reason(anchor: ItemRow, sources: tuple[str, ...]) -> Reason:
    if "fbt" in sources:
        return Reason("bought_together", f"Frequently bought with {anchor.title}")
    return Reason("also_bought", f"Customers who bought {anchor.title} also bought")


def _category_popular(model: ActiveModel | None, anchor_pk: int, k: int) -> retrieval.SourceHits:
    """Popular items of the anchor's category: the answer for an item the model has never seen."""
    if model is None:
        return retrieval.SourceHits.empty()
    rows = catalog_rows([anchor_pk])
    category = rows[anchor_pk].category_id if anchor_pk in rows else -1
    if category < 0:
        return retrieval.SourceHits.empty()
    same = np.asarray(model.array("item_category")) == category
    hits = retrieval.top_k(np.asarray(model.popularity), k, exclude=~same)
    return _to_pks(model, hits)


def _respond(
    endpoint: str, surface: str, items: Sequence[RecommendedItem], pks: npt.NDArray[np.int64],
    model: ActiveModel | None, started: float, log_impression: bool,
) -> RecommendationList:  # fmt: skip
    request_id = uuid.uuid4().hex
    assignment = experiments.assign(surface=surface, unit_id=request_id)
    if log_impression:
        experiments.impression_log(
            request_id=request_id, surface=surface, customer_id="", session_id="", assignment=assignment,
            item_pks=pks.tolist(), model_version=model.version_id if model else None,
            latency_ms=(time.perf_counter() - started) * 1000,
        )  # fmt: skip
    REQUESTS.labels(endpoint, surface, "-", "miss").inc()
    LATENCY.labels(endpoint, surface, "-").observe(time.perf_counter() - started)
    return RecommendationList(
        request_id=request_id, surface=surface, items=tuple(items), experiment=assignment.experiment_key,
        variant=assignment.variant, model_version=model.version_id if model else None, degraded=model is None,
    )  # fmt: skip


def similar_items(*, item_id: str, count: int = 10, log_impression: bool = True) -> RecommendationList:
    """Items similar to ``item_id``: collaborative neighbours blended with content similarity; content alone for
    items without interactions; popular items of its category for an item added after the last training."""
    started = time.perf_counter()
    anchor_pk = item_pk(item_id)
    if anchor_pk is None:
        raise UnknownItem(item_id)
    model = get_active_model()
    hits = _neighbour_lists(model, np.array([anchor_pk]), SIMILAR_BLEND, count * 4)
    if not hits:
        hits["popular"] = _category_popular(model, anchor_pk, count * 4)
    items, pks = _item_list(
        endpoint="similar", surface="similar", anchor_pk=anchor_pk, hits=hits, count=count,
        reason_for=_similar_reason,
    )  # fmt: skip
    return _respond("similar", "similar", items, pks, model, started, log_impression)


def bought_together(*, item_id: str, count: int = 10, log_impression: bool = True) -> RecommendationList:
    """Items frequently bought in the same basket as ``item_id`` (co-purchase with support and lift thresholds);
    when there are too few, what buyers of the item also bought."""
    started = time.perf_counter()
    anchor_pk = item_pk(item_id)
    if anchor_pk is None:
        raise UnknownItem(item_id)
    model = get_active_model()
    hits = _neighbour_lists(model, np.array([anchor_pk]), (("fbt", "fbt", 1.0),), count * 3)
    if sum(len(h) for h in hits.values()) < count:
        hits |= _neighbour_lists(model, np.array([anchor_pk]), (("knn", "item_knn", 0.5),), count * 3)
    items, pks = _item_list(
        endpoint="bought_together", surface="bought_together", anchor_pk=anchor_pk, hits=hits, count=count,
        reason_for=_bought_together_reason,
    )  # fmt: skip
    return _respond("bought_together", "bought_together", items, pks, model, started, log_impression)


def _because(verb: str, title: str) -> Reason:
    return Reason(f"because_you_{verb}", f"Because you {verb} {title}")


@dataclass(frozen=True)
class AnchorGroup:
    anchor_item_id: str
    anchor_title: str
    reason: Reason
    items: tuple[RecommendedItem, ...]


@dataclass(frozen=True)
class AnchorGroups:
    request_id: str
    groups: tuple[AnchorGroup, ...]
    model_version: int | None
    experiment: str | None = None
    variant: str | None = None


def because_you_viewed(*, customer_id: str, count: int = 10, groups: int = 3) -> AnchorGroups:
    """Up to ``groups`` lists, one per recently viewed or bought item, each of its neighbours (already bought
    items left out). An unknown or opted-out customer gets no groups."""
    started = time.perf_counter()
    model = get_active_model()
    request_id = uuid.uuid4().hex
    assignment = experiments.assign(surface="because_you_viewed", unit_id=customer_id)
    arm = {"experiment": assignment.experiment_key, "variant": assignment.variant}
    if model is None or _opt_outs.contains(customer_id):
        return AnchorGroups(request_id, (), model.version_id if model else None, **arm)
    history = _History.load(customer_id)
    anchor_pks, anchor_types = history.anchors(groups)
    purchased = history.purchased()
    result = []
    shown: list[int] = []
    for pk, type_ in zip(anchor_pks.tolist(), anchor_types.tolist(), strict=True):
        hits = _neighbour_lists(model, np.array([pk]), SIMILAR_BLEND, count * 3)
        if not hits:
            continue
        verb = VERBS.get(type_, "viewed")
        items, pks = _item_list(
            endpoint="because_you_viewed", surface="because_you_viewed", anchor_pk=pk, hits=hits, count=count,
            reason_for=lambda anchor, _sources, verb=verb: _because(verb, anchor.title),
            exclude=np.union1d(purchased, np.array(shown, np.int64)),
        )  # fmt: skip
        if not items:
            continue
        shown.extend(pks.tolist())
        anchor_row = catalog_rows([pk])[pk]
        result.append(
            AnchorGroup(
                anchor_row.item_id,
                anchor_row.title,
                Reason(f"because_you_{verb}", f"Because you {verb} {anchor_row.title}"),
                tuple(items),
            )
        )
    REQUESTS.labels("because_you_viewed", "because_you_viewed", "-", "miss").inc()
    LATENCY.labels("because_you_viewed", "because_you_viewed", "-").observe(time.perf_counter() - started)
    return AnchorGroups(request_id, tuple(result), model.version_id, **arm)
