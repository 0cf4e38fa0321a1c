"""The item-anchored lists: similar items, frequently bought together, and "because you viewed" groups. Each
merges the anchor's neighbour tables, then takes the same re-ranker (availability, rules) and the item cache's
attributes as the personal lists."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from catalog.selectors import ItemRow
from events.keys import customer_owner
from experiments import services as experiments
from ranking import rerank as rr
from ranking import retrieval, rules
from ranking.artifacts import ActiveModel, get_active_model
from ranking.pipeline import online
from ranking.pipeline.responses import (
    LATENCY,
    REQUESTS,
    AnchorGroup,
    AnchorGroups,
    RecommendationList,
    RecommendedItem,
    UnknownItem,
)
from ranking.pipeline.stages import Reason, neighbour_hits, to_pks
from ranking.pipeline.state import VERBS, History
from ranking.sources import PURCHASE

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
        found = to_pks(model, neighbour_hits(model, prefix, idx, k))
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
    attributes, _ = online.attributes(cand, time.time())
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
    rows = online.catalog_rows([anchor_pk, *result.item_idx.tolist()])
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
    # Too few bought together: the item-kNN neighbours, learnt from every kind of event (views too), so the reason
    # does not claim a purchase (a shop with views only read "Customers who bought"; a seventh tester, 6 December).
    return Reason("also_liked", f"Customers who liked {anchor.title} also liked")


def _category_popular(model: ActiveModel | None, anchor_pk: int, k: int) -> retrieval.SourceHits:
    """Popular items of the anchor's category: the answer for an item the model has never seen."""
    if model is None:
        return retrieval.SourceHits.empty()
    rows = online.catalog_rows([anchor_pk])
    category = rows[anchor_pk].category_id if anchor_pk in rows else -1
    if category < 0:
        return retrieval.SourceHits.empty()
    same = np.asarray(model.array("item_category")) == category
    hits = retrieval.top_k(np.asarray(model.popularity), k, exclude=~same)
    return to_pks(model, hits)


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


def similar_list(
    model: ActiveModel | None, anchor_pk: int, *, count: int, exclude: npt.NDArray[np.int64] | None = None
) -> tuple[list[RecommendedItem], npt.NDArray[np.int64]]:
    """The items of a similar-items list (and their pks), leaving out ``exclude``."""
    hits = _neighbour_lists(model, np.array([anchor_pk]), SIMILAR_BLEND, count * 4)
    if not hits:
        hits["popular"] = _category_popular(model, anchor_pk, count * 4)
    return _item_list(
        endpoint="similar", surface="similar", anchor_pk=anchor_pk, hits=hits, count=count,
        reason_for=_similar_reason, exclude=exclude,
    )  # fmt: skip


def similar_items(*, item_id: str, count: int = 10, log_impression: bool = True) -> RecommendationList:
    """Items similar to ``item_id``: collaborative neighbours blended with content similarity; content alone for
    items without interactions; popular items of its category for an item added after the last training."""
    started = time.perf_counter()
    anchor_pk = online.item_pk(item_id)
    if anchor_pk is None:
        raise UnknownItem(item_id)
    model = get_active_model()
    items, pks = similar_list(model, anchor_pk, count=count)
    return _respond("similar", "similar", items, pks, model, started, log_impression)


def bought_together(*, item_id: str, count: int = 10, log_impression: bool = True) -> RecommendationList:
    """Items frequently bought in the same basket as ``item_id`` (co-purchase with support and lift thresholds);
    when there are too few, its item-kNN neighbours (what customers who liked it also liked)."""
    started = time.perf_counter()
    anchor_pk = online.item_pk(item_id)
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


def anchor_groups(
    model: ActiveModel, history: History, *, count: int, groups: int, exclude: npt.NDArray[np.int64]
) -> tuple[list[AnchorGroup], npt.NDArray[np.int64]]:
    """Up to ``groups`` lists, one per recent history anchor, each of its neighbours, leaving out bought items,
    ``exclude`` and what earlier groups showed; and every item pk shown."""
    anchor_pks, _ = history.anchors(groups)
    anchor_types = history.strongest_types(anchor_pks)  # bought, then clicked again: "Because you bought"
    purchased = history.of_types(PURCHASE)
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
            exclude=np.union1d(np.union1d(purchased, exclude), np.array(shown, np.int64)),
        )  # fmt: skip
        if not items:
            continue
        shown.extend(pks.tolist())
        anchor_row = online.catalog_rows([pk])[pk]
        result.append(
            AnchorGroup(
                anchor_row.item_id,
                anchor_row.title,
                Reason(f"because_you_{verb}", f"Because you {verb} {anchor_row.title}"),
                tuple(items),
            )
        )
    return result, np.asarray(shown, np.int64)


def because_you_viewed(*, customer_id: str, count: int = 10, groups: int = 3) -> AnchorGroups:
    """Up to ``groups`` lists, one per recently viewed or bought item, each of its neighbours (already bought
    and dismissed items left out). An unknown or opted-out customer gets no groups."""
    started = time.perf_counter()
    model = get_active_model()
    request_id = uuid.uuid4().hex
    opted_out = online.opt_outs.contains(customer_id)
    # The unit the experiment's results count: the customer, whose id the impression carries; an opted-out one's
    # impression carries none, so each of their lists is a unit of its own.
    assignment = experiments.assign(surface="because_you_viewed", unit_id=request_id if opted_out else customer_id)
    arm = {"experiment": assignment.experiment_key, "variant": assignment.variant}
    result: list[AnchorGroup] = []
    shown = np.empty(0, np.int64)
    degraded = model is None
    if model is not None and not opted_out:
        # The recommendations' read of the owner's state: Redis, or Postgres (degraded, and a lost online state asks
        # for its rebuild) when Redis is down or no longer complete.
        read = online.owner_state((customer_owner(customer_id),), None, True)
        history = read.history.without_items(read.dismissed_pks)
        result, shown = anchor_groups(model, history, count=count, groups=groups, exclude=read.dismissed_pks)
        degraded = read.source == "postgres"
    # Logged as the page's widget is: the arm named in the answer has its lists counted (it logged none, so an
    # experiment on this surface saw only page widgets: a twelfth tester, 6 December).
    version = model.version_id if model is not None else None
    experiments.impression_log(
        request_id=request_id, surface="because_you_viewed", customer_id="" if opted_out else customer_id,
        session_id="", assignment=assignment, item_pks=shown.tolist(), model_version=version,
        latency_ms=(time.perf_counter() - started) * 1000,
    )  # fmt: skip
    REQUESTS.labels("because_you_viewed", "because_you_viewed", "-", "miss").inc()
    LATENCY.labels("because_you_viewed", "because_you_viewed", "-").observe(time.perf_counter() - started)
    return AnchorGroups(request_id, tuple(result), version, **arm, degraded=degraded)
