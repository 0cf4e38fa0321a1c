"""The recommendation service: what a storefront gets on every page view.

``recommend`` is a short composition: experiment assignment -> list cache -> the pipeline of docs/architecture.md
(``ranking.pipeline``: history -> user vector -> retrieve -> score -> re-rank -> explain, pure stages fed by the
Redis/Postgres adapters of ``ranking.pipeline.online``) -> impression log and metrics. The same stage functions
build the offline evaluation's lists and the ranker's training rows (``ranking.pipeline.offline``). A debug request
skips the cache and nothing else: its trace is a by-product of the served path's own stage calls.

The item-anchored lists (``similar_items``, ``bought_together``, ``because_you_viewed``) live in
``ranking.pipeline.anchored`` and are re-exported here, like every name other modules import from this one. A whole
page of widgets (``ranking.pages``) is built from this module's shared work and list (``shared_work``, ``serve``);
what each answer showed, for later ``exclude_request_ids``, is buffered in ``ranking.shown``. The synthetic freshness
probe (``ranking.freshness``) serves through ``recommend``.
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

from events import online as events_online
from events import selectors as event_selectors
from events.keys import owner_for
from experiments import services as experiments
from experiments.config import VariantConfig
from kernel import redis_client
from ranking import rerank as rr
from ranking import rules
from ranking.artifacts import ActiveModel, model_for
from ranking.cache import ListCache, Prefetched, list_key
from ranking.pipeline import online, stages
from ranking.pipeline.anchored import (
    SIMILAR_BLEND,
    because_you_viewed,
    bought_together,
    similar_items,
)
from ranking.pipeline.online import catalog_rows, item_pk
from ranking.pipeline.responses import (
    CATEGORY_SHARE,
    DEGRADED,
    EVENT_TO_LIST,
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
    RetrievalParams,
    serve_mode_of,
    serve_source,
)
from ranking.shown import SHOWN, remember_shown

logger = logging.getLogger(__name__)

MAX_COUNT = 100
CACHE = ListCache(ttl_seconds=60.0)
MAX_EXCLUDE_REQUESTS = 20

# The adapters tests and benchmarks reach through this module.
_ranker_for = online.ranker_for
_ctr = online.ctr
_exposure = online.exposure


_STAGE_CHILDREN: dict[str, Any] = {}  # stage name -> STAGE's child (a fixed set of names)


class _Trace:
    """Per-stage timings (always recorded in the metrics; returned in the debug trace)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, *, before: float = 0.0) -> Iterator[None]:
        """Time the block as stage ``name``, plus ``before`` seconds of its work done earlier elsewhere (the owner
        state a list cache's round trip read for the "history" stage)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started + before
            child = _STAGE_CHILDREN.get(name)
            if child is None:  # labels() costs a few µs, seven stages a request: each stage's child resolved once
                child = _STAGE_CHILDREN.setdefault(name, STAGE.labels(name))
            child.observe(elapsed)
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
    # Earlier answers of this owner (their request ids) whose items are left out: a page's second and later lists.
    exclude_request_ids: tuple[str, ...] = ()
    probe: bool = False  # the freshness probe: no impression, no traffic metrics, its own freshness label
    replay: Replay | None = None  # the dry run re-serving a logged request (ranking/dry_run.py)


@dataclass(frozen=True)
class Replay:
    """A logged request served again by the dry run: under its logged request id (the exploration seed), with an
    explicit rule set instead of the published rules in force, and serving-setting changes. Never cached, logged or
    counted as traffic."""

    request_id: str
    rule_set: tuple[rr.Rule, ...]
    config_changes: tuple[tuple[str, Any], ...] = ()


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
    personal, owners = owners_of(customer_id=request.customer_id, session_id=request.session_id)
    owner = owners[0] if owners else ""
    request_id = request.replay.request_id if request.replay is not None else uuid.uuid4().hex
    assignment = experiments.assign(
        surface=request.surface, unit_id=experiment_unit(owner, request.session_id, request_id),
        forced_variant=request.forced_variant,
    )  # fmt: skip
    config = assignment.config
    if not request.rules:
        config = dataclasses.replace(config, rules_enabled=False)
    if request.replay is not None and request.replay.config_changes:
        config = dataclasses.replace(config, **dict(request.replay.config_changes))
    # An experiment arm may name a model version (VariantConfig.model_version): the A/B test of a version before it
    # is activated. Without one, or when it cannot be loaded, the active version.
    model = model_for(config.model_version)
    model_version = model.version_id if model else None

    excluded_requests = request.exclude_request_ids[:MAX_EXCLUDE_REQUESTS] if owner else ()
    pending_shown = SHOWN.pending(owners, excluded_requests) if excluded_requests else None

    def compute(prefetched: Prefetched | None, redis_ok: bool = True) -> CachedList:
        # The cache's miss round trip read the owners' state: the "history" stage counts it (the trace then says
        # where a slow Redis costs, and the stages add up to the request).
        shared = shared_work(
            owners, prefetched.replies if prefetched is not None else None, redis_ok, model=model,
            context_item_id=request.context_item_id, context_category=request.context_category,
            excluded_requests=excluded_requests, pending_shown=pending_shown, probe=request.probe,
            read_seconds=prefetched.seconds if prefetched is not None else 0.0,
        )  # fmt: skip
        return serve(
            request, owners=owners, config=config, model=model, variant=assignment.variant, request_id=request_id,
            shared=shared,
        )  # fmt: skip

    value: CachedList | None = None
    tier = "bypass"
    redis_ok = True
    if not request.debug and request.replay is None:
        # Everything but the surface and the owners is digested (ranking.cache.list_key): free-form ids and
        # categories must not bend the key's shape.
        key = list_key(request.surface, owners, (
            request.count, request.category, sorted(request.exclude), request.context_item_id,
            request.context_category, sorted(excluded_requests), assignment.variant, _config_key(config),
            model_version, rules.version_token(), rules.next_edge(now=time.time()), online.item_cache_token(),
        ))  # fmt: skip
        try:
            value, tier = CACHE.get_or_compute(
                key, compute,
                version_key=[event_selectors.cache_version_key(o) for o in owners] or None,
                prefetch=(lambda pipe: _queue_shared_reads(pipe, owners, excluded_requests)) if owners else None,
            )  # fmt: skip
        except redis.RedisError:
            # Without Redis there is no cache version, so no cache to trust: compute from Postgres and say so.
            redis_ok = False
            DEGRADED.labels("redis").inc()
            logger.warning("recommend_without_redis", extra={"owner": owner})
    if value is None:
        value = compute(None, redis_ok)
    items = items_of(value)
    if request.replay is not None:  # not traffic: no impression, no request metrics
        return RecommendationList(
            request_id=request_id, surface=request.surface, items=items, experiment=assignment.experiment_key,
            variant=assignment.variant, model_version=model_version, degraded=value["degraded"], cache=tier,
            debug=value.get("debug"),
        )  # fmt: skip
    if request.log_impression and redis_ok and not request.probe:
        experiments.impression_log(
            request_id=request_id, surface=request.surface, customer_id=request.customer_id if personal else "",
            session_id=request.session_id, assignment=assignment, item_pks=value["item_pks"],
            model_version=model_version, latency_ms=(time.perf_counter() - started) * 1000,
        )  # fmt: skip
        if owner:
            remember_shown({owner: {request_id: value["item_pks"]}})
    variant = assignment.variant or "-"
    if not request.probe:
        REQUESTS.labels("recommendations", request.surface, variant, tier).inc()
        LATENCY.labels("recommendations", request.surface, variant).observe(time.perf_counter() - started)
    return RecommendationList(
        request_id=request_id, surface=request.surface, items=items, experiment=assignment.experiment_key,
        variant=assignment.variant, model_version=model_version, degraded=value["degraded"], cache=tier,
        debug=value.get("debug"),
    )  # fmt: skip


def items_of(value: CachedList) -> tuple[RecommendedItem, ...]:
    return tuple(
        RecommendedItem(**{**item, "reason": Reason(**item["reason"]), "sources": tuple(item["sources"])})
        for item in value["items"]
    )


def serve_mode(model: ActiveModel | None) -> str:
    """What the version serves ("pipeline" or "source:<name>", recorded at training); "pipeline" without one."""
    return serve_mode_of(model.meta) if model is not None else PIPELINE


def experiment_unit(owner: str, session_id: str, request_id: str) -> str:
    """What an experiment hashes for a list: the unit its results will count the list's impression under
    (experiments.selectors: the customer, else the session, else the list itself). A personal list's owner (the
    customer); else the session (an opted-out customer's impression carries only that); else the request: a list
    asked for with neither (a crawler, a server-side render, an opted-out customer without a session) is a unit of
    its own. Such lists all hashed "anonymous" (or the opted-out customer's id), so they all went to one arm and
    counted as that many units of it: a sample-ratio mismatch (a twelfth tester, 6 December). The session is hashed
    as the owner it is when it browses anonymously (``s:<session>``): hashed bare for an opted-out customer on it,
    one session unit could sit in both arms."""
    if owner:
        return owner
    return owner_for(customer_id="", session_id=session_id) if session_id else request_id


def owners_of(*, customer_id: str, session_id: str) -> tuple[bool, tuple[str, ...]]:
    """(personal, the owners whose online state a list reads): nobody for an opted-out customer (personal False);
    a customer who browsed anonymously before signing up reads the session's state too (until a session merge moves
    it over), in the same round trip as the customer's own."""
    if customer_id and online.opt_outs.contains(customer_id):
        return False, ()
    owner = owner_for(customer_id=customer_id, session_id=session_id)
    if owner == "s:":
        return True, ()
    if customer_id and session_id:
        return True, (owner, owner_for(customer_id="", session_id=session_id))
    return True, (owner,)


def _queue_shared_reads(pipe: Any, owners: Sequence[str], excluded_requests: Sequence[str]) -> None:
    """The owners' online state and (for ``exclude_request_ids``) what those answers showed, on one pipeline."""
    online.queue_owner_state(pipe, owners)
    if excluded_requests:
        events_online.queue_shown_reads(pipe, owners, excluded_requests)


def read_shared(owners: Sequence[str], excluded_requests: Sequence[str]) -> list[Any] | None:
    """:func:`_queue_shared_reads` in a round trip of its own; None when Redis is unavailable."""
    try:
        pipe = redis_client.get().pipeline(transaction=False)
        _queue_shared_reads(pipe, owners, excluded_requests)
        return list(pipe.execute())
    except redis.RedisError:
        return None


@dataclass
class SharedWork:
    """What every list of one request (or one page) shares: the owners' online state read once, the page context,
    the user vector folded once, and the items already shown (earlier answers, dismissed items)."""

    read: online.OwnerRead
    own_history: Any  # the owners' history without dismissed items, before the page context (anchors of a page)
    context_item_pk: int | None
    context_category_pk: int | None
    history: Any  # the history with the page context in front (stages.with_context)
    affinity: dict[int, float]
    user_vector: Any
    shown: np.ndarray  # items of ``exclude_request_ids`` answers
    stages_ms: dict[str, float]


def shared_work(
    owners: tuple[str, ...],
    prefetched: Sequence[Any] | None,
    redis_ok: bool,
    *,
    model: ActiveModel | None,
    context_item_id: str,
    context_category: str,
    excluded_requests: Sequence[str],
    pending_shown: np.ndarray | None = None,
    probe: bool = False,
    read_seconds: float = 0.0,
) -> SharedWork:
    """Read the owners' state (from the prefetched replies, else in one round trip here), observe the freshness of
    their pending events, apply the page context, fold the user vector. ``pending_shown``: the items of
    ``excluded_requests`` this process has not written to Redis yet, looked up BEFORE the Redis read (so an answer
    is found in one place or the other, whenever the background write happens). ``read_seconds``: how long the
    round trip that read ``prefetched`` took, counted in the "history" stage."""
    trace = _Trace()
    shown = np.empty(0, np.int64)
    with trace.stage("history", before=read_seconds):
        if owners and excluded_requests and redis_ok and prefetched is None:
            prefetched = read_shared(owners, excluded_requests)
        size = event_selectors.OWNER_STATE_REPLIES * len(owners)
        if prefetched is not None and excluded_requests and len(prefetched) > size:
            shown = events_online.parse_shown(prefetched[size:])
            prefetched = prefetched[:size]
        read = online.owner_state(owners, prefetched, redis_ok)
        if pending_shown is not None:
            shown = np.union1d(shown, pending_shown)
        if read.arrivals:
            _observe_freshness(read.arrivals, probe=probe)
        context_item_pk, context_category_pk = online.context_of(context_item_id, context_category)
        state = RequestState(surface="", count=0, now=time.time())
        state.history, state.affinity = read.history, read.affinity
        state.dismissed_pks, state.dismissed_ts = read.dismissed_pks, read.dismissed_ts
        state.context_item_pk, state.context_category_pk = context_item_pk, context_category_pk
        stages.forget_dismissed(state)
        own_history = state.history
        stages.with_context(state)
    with trace.stage("user_vector"):
        stages.user_vector(state, model)
    return SharedWork(
        read, own_history, context_item_pk, context_category_pk, state.history, state.affinity, state.user_vector,
        shown, trace.stages,
    )  # fmt: skip


def _observe_freshness(arrivals: dict[str, bytes], *, probe: bool) -> None:
    """A list is being computed from a state holding these owners' pending events: record how long they waited,
    and forget them (so only the first list that reflects an event counts it)."""
    now = time.time()
    for raw in arrivals.values():
        try:
            EVENT_TO_LIST.labels("probe" if probe else "traffic").observe(max(0.0, now - float(raw)))
        except ValueError:
            continue
    try:
        events_online.arrivals_reflected(arrivals)
    except redis.RedisError:
        logger.warning("arrivals_reflected_failed", exc_info=True)


def serve(
    request: RecommendRequest,
    *,
    owners: tuple[str, ...],
    config: VariantConfig,
    model: ActiveModel | None,
    variant: str | None,
    request_id: str,
    shared: SharedWork,
    page_exclude: np.ndarray | None = None,
) -> CachedList:
    """The list itself: the pipeline's stages on one request state, from the shared work (``shared_work``: the
    owners' state, the page context, the user vector). ``page_exclude``: items other lists of the page showed."""
    trace = _Trace()
    trace.stages.update(shared.stages_ms)
    state = RequestState(
        surface=request.surface,
        count=request.count,
        now=time.time(),
        mode=serve_mode(model),
        degraded=model is None,
        retrieval=RetrievalParams.of(model.params if model is not None else None),
    )
    if model is None:
        DEGRADED.labels("no_model").inc()
    history_source = shared.read.source
    state.degraded |= history_source == "postgres"
    state.history, state.affinity = shared.history, shared.affinity
    state.context_item_pk, state.context_category_pk = shared.context_item_pk, shared.context_category_pk
    state.dismissed_pks, state.dismissed_ts = shared.read.dismissed_pks, shared.read.dismissed_ts
    state.had_pks, state.had_types = shared.read.had_pks, shared.read.had_types
    state.user_vector = shared.user_vector
    with trace.stage("retrieval"):
        # Everything the list leaves out, before retrieval (the global lists' quotas count past it): what the owner
        # has and dismissed (never back), earlier answers' and the page's items, the request's exclusions, and the
        # item on the page (not recommended to its own viewer).
        more: list[Any] = [shared.shown]
        if page_exclude is not None:
            more.append(page_exclude)
        if request.exclude:
            more.append(online.item_pks(request.exclude))
        if state.context_item_pk is not None:
            more.append([state.context_item_pk])
        stages.leave_out(state, config, *more)
        pin_rules = (
            (request.replay.rule_set if request.replay is not None else rules.active_rules(surface=request.surface,
                                                                                           now=state.now))
            if config.rules_enabled else ()
        )  # fmt: skip
        pinned = np.array([r.target_value for r in pin_rules if r.kind == "pin"], np.int64)
        # A list of one category draws its popular candidates from that category first (else a category outside
        # the catalog's top items got an empty list: an eighth tester, 6 December); a page's category likewise.
        category_pk = online.category_pk(request.category) if request.category else None
        lists = online.global_lists(
            model, category_pk if category_pk is not None else state.context_category_pk,
            left_out=state.left_out.size,
        )  # fmt: skip
        stages.retrieve(state, model, lists, pinned)
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
        stages.nudge_context_category(state)
        stages.demote_dismissed(state, model)
    with trace.stage("rerank"):
        exclude = state.left_out
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
        value["debug"]["dismissed"] = int(state.dismissed_pks.size)
        value["debug"]["had"] = int(state.had_pks.size)
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
    SHOWN.clear()
    online.clear()


__all__ = [
    "ANCHORS", "ANCHOR_DECAY", "AnchorGroup", "AnchorGroups", "CACHE", "DatabaseError", "HISTORY_LIMIT", "MAX_COUNT",
    "QUOTAS", "Reason", "RecommendRequest", "RecommendationList", "RecommendedItem", "SIMILAR_BLEND", "UnknownItem",
    "VERBS", "because_you_viewed", "bought_together", "catalog_rows", "clear_caches", "item_pk", "recommend",
    "serve_mode", "similar_items",
]  # fmt: skip
