"""The recommendation service: what a storefront gets on every page view.

``recommend`` is a short composition: experiment assignment -> list cache -> the pipeline of docs/architecture.md
(``ranking.pipeline``: history -> user vector -> retrieve -> score -> re-rank -> explain, pure stages fed by the
Redis/Postgres adapters of ``ranking.pipeline.online``) -> impression log and metrics. The same stage functions
build the offline evaluation's lists and the ranker's training rows (``ranking.pipeline.offline``). A debug request
skips the cache and nothing else: its trace is a by-product of the served path's own stage calls.

The item-anchored lists (``similar_items``, ``bought_together``, ``because_you_viewed``) live in
``ranking.pipeline.anchored`` and are re-exported here, like every name other modules import from this one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
import redis
from django.db import DatabaseError

from events import selectors as event_selectors
from events.keys import owner_for
from experiments import services as experiments
from experiments.config import VariantConfig
from ranking import rules
from ranking.artifacts import ActiveModel, get_active_model
from ranking.cache import ListCache
from ranking.pipeline import online, stages
from ranking.pipeline.anchored import SIMILAR_BLEND, because_you_viewed, bought_together, similar_items
from ranking.pipeline.online import catalog_rows, item_pk
from ranking.pipeline.responses import (
    CATEGORY_SHARE,
    DEGRADED,
    LATENCY,
    REQUESTS,
    STAGE,
    AnchorGroup,
    AnchorGroups,
    RecommendationList,
    RecommendedItem,
    UnknownItem,
)
from ranking.pipeline.stages import Reason
from ranking.pipeline.state import (
    ANCHOR_DECAY,
    ANCHORS,
    HISTORY_LIMIT,
    PIPELINE,
    QUOTAS,
    VERBS,
    RequestState,
    serve_mode_of,
    serve_source,
)

logger = logging.getLogger(__name__)

MAX_COUNT = 100
CACHE = ListCache(ttl_seconds=60.0)

# The adapters tests and benchmarks reach through this module.
_ranker_for = online.ranker_for
_ctr = online.ctr
_exposure = online.exposure


class _Trace:
    """Per-stage timings (always recorded in the metrics; returned in the debug trace)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            STAGE.labels(name).observe(elapsed)
            self.stages[name] = round(elapsed * 1000, 3)


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


class CachedList(TypedDict, total=False):
    """A computed list as the cache stores it (JSON)."""

    surface: str
    items: list[dict[str, Any]]
    item_pks: list[int]
    degraded: bool
    debug: dict[str, Any]


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
    opted_out = bool(request.customer_id) and online.opt_outs.contains(request.customer_id)
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

    def compute(prefetched: Sequence[Any] | None, redis_ok: bool = True) -> CachedList:
        return _serve(
            request, owners=owners, config=config, model=model, variant=assignment.variant, request_id=request_id,
            redis_ok=redis_ok, prefetched=prefetched,
        )  # fmt: skip

    value: CachedList | None = None
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
            str(rules.next_edge(now=time.time())), online.item_cache_token(),
        ))  # fmt: skip
        try:
            value, tier = CACHE.get_or_compute(
                key, compute,
                version_key=[event_selectors.cache_version_key(o) for o in owners] or None,
                prefetch=(lambda pipe: online.queue_owner_state(pipe, owners)) if owners else None,
            )  # fmt: skip
        except redis.RedisError:
            # Without Redis there is no cache version, so no cache to trust: compute from Postgres and say so.
            redis_ok = False
            DEGRADED.labels("redis").inc()
            logger.warning("recommend_without_redis", extra={"owner": owner})
    if value is None:
        value = compute(None, redis_ok)
    items = tuple(
        RecommendedItem(**{**item, "reason": Reason(**item["reason"]), "sources": tuple(item["sources"])})
        for item in value["items"]
    )
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
        request_id=request_id, surface=request.surface, items=items, experiment=assignment.experiment_key,
        variant=assignment.variant, model_version=model_version, degraded=value["degraded"], cache=tier,
        debug=value.get("debug"),
    )  # fmt: skip


def serve_mode(model: ActiveModel | None) -> str:
    """What the version serves ("pipeline" or "source:<name>", recorded at training); "pipeline" without one."""
    return serve_mode_of(model.meta) if model is not None else PIPELINE


def _serve(
    request: RecommendRequest,
    *,
    owners: tuple[str, ...],
    config: VariantConfig,
    model: ActiveModel | None,
    variant: str | None,
    request_id: str,
    redis_ok: bool,
    prefetched: Sequence[Any] | None,
) -> CachedList:
    """The list itself: the pipeline's stages on one request state. ``prefetched``: the owners' online state as
    read by the cache's miss round trip (None: read here, the same way)."""
    trace = _Trace()
    state = RequestState(
        surface=request.surface, count=request.count, now=time.time(), mode=serve_mode(model), degraded=model is None
    )
    if model is None:
        DEGRADED.labels("no_model").inc()
    with trace.stage("history"):
        state.history, state.affinity, history_source = online.owner_state(owners, prefetched, redis_ok)
        state.degraded |= history_source == "postgres"
        state.context_item_pk, state.context_category_pk = online.context_of(
            request.context_item_id, request.context_category
        )
        stages.with_context(state)
    with trace.stage("user_vector"):
        stages.user_vector(state, model)
    with trace.stage("retrieval"):
        pin_rules = rules.active_rules(surface=request.surface, now=state.now) if config.rules_enabled else ()
        pinned = np.array([r.target_value for r in pin_rules if r.kind == "pin"], np.int64)
        stages.retrieve(state, model, online.global_lists(model, state.context_category_pk), pinned)
    with trace.stage("catalog"):
        state.attributes, fresh = online.attributes(state.cand, state.now)
        if not fresh:  # some candidates could not be looked up: Postgres is unreachable
            DEGRADED.labels("postgres").inc()
            state.degraded = True
        if request.category:
            stages.restrict_category(state, online.category_pk(request.category))
    with trace.stage("ranking"):
        wants_ranker = model is not None and config.ranker and serve_source(state.mode) is None
        stages.score(state, model, online.ranker_for(model) if wants_ranker else None, config, online.ctr)
    with trace.stage("rerank"):
        exclude = stages.had_items(state, config)
        if request.exclude:
            exclude = np.union1d(exclude, online.item_pks(request.exclude))
        if state.context_item_pk is not None:  # the item on the page is not recommended to its own viewer
            exclude = np.union1d(exclude, [state.context_item_pk])
        # Exposure and clicks matter only to exploration: skipped when it is off.
        cand = state.cand
        exposure, clicks = online.exposure(model, cand) if config.exploration_share > 0 else (np.zeros(cand.size), None)
        owner = owners[0] if owners else ""
        stages.rerank(
            state, config, pin_rules, exclude=exclude, exposure=exposure, clicks=clicks,
            seed=stages.seed_of(owner, request_id),
        )  # fmt: skip
    with trace.stage("explain"):
        assert state.result is not None
        rows = online.catalog_rows([*state.result.item_idx.tolist(), *stages.anchor_pks_of(state).tolist()])
        explained = stages.explain(state, rows)
    items = [
        {
            "item_id": rows[e.pk].item_id, "title": rows[e.pk].title, "category": rows[e.pk].category,
            "price": rows[e.pk].price, "score": e.score, "reason": {"code": e.reason.code, "text": e.reason.text},
            "sources": list(e.sources),
        }
        for e in explained
    ]  # fmt: skip
    if items:
        assert state.attributes is not None
        shares = np.unique(state.attributes.category[np.searchsorted(cand, state.result.item_idx)], return_counts=True)
        CATEGORY_SHARE.observe(float(shares[1].max() / state.result.item_idx.size))
    value: CachedList = {
        "surface": request.surface, "items": items, "item_pks": [e.pk for e in explained], "degraded": state.degraded,
    }  # fmt: skip
    if request.debug:
        value["debug"] = _debug(state, trace, history_source, variant)
    return value


def _debug(state: RequestState, trace: _Trace, history_source: str, variant: str | None) -> dict[str, Any]:
    """The trace of the served path, read off the request state its stages filled."""
    assert state.candidates is not None
    assert state.scores is not None
    assert state.result is not None
    cand, scores, result = state.cand, state.scores, state.result
    top = np.argsort(-scores)[:20]
    top_rows = online.catalog_rows(cand[top].tolist())
    return {
        "stages_ms": trace.stages,
        "candidates_per_source": state.candidates.per_source_counts(),
        "candidates": int(cand.size),
        "serve": state.mode,
        "ranker": state.scorer,  # "lambdamart", "blend" or "source:<name>"
        "ranker_engine": state.engine,  # lleaves (compiled), lightgbm (until compiled), None: not the ranker
        "diversity": state.diversity,
        "degraded": state.degraded,
        "history_source": history_source,  # redis, postgres (the online state is down or lost), none
        "context": {"item": state.context_item_pk is not None, "category": state.context_category_pk is not None},
        "dropped": dict(result.dropped),
        "rules_fired": sorted({rule for fired in result.fired for rule in fired}),
        "skipped_pins": list(result.skipped_pins),
        "history_length": int(state.history.pks.size),
        "top_scores": [
            {"item_id": top_rows[pk].item_id, "score": round(float(score), 6)}
            for pk, score in zip(cand[top].tolist(), scores[top].tolist(), strict=True)
            if pk in top_rows
        ],
        "variant": variant,
    }


def clear_caches() -> None:
    """Forget per-process caches (tests, and after a catalog rebuild)."""
    CACHE.clear_local()
    online.clear()


__all__ = [
    "ANCHORS", "ANCHOR_DECAY", "AnchorGroup", "AnchorGroups", "CACHE", "DatabaseError", "HISTORY_LIMIT", "MAX_COUNT",
    "QUOTAS", "Reason", "RecommendRequest", "RecommendationList", "RecommendedItem", "SIMILAR_BLEND", "UnknownItem",
    "VERBS", "because_you_viewed", "bought_together", "catalog_rows", "clear_caches", "item_pk", "recommend",
    "serve_mode", "similar_items",
]  # fmt: skip
