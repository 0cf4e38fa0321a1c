"""A whole page: several widgets in one call (``POST /v1/pages``), in the order given, no item twice across them.
The page shares the pipeline's work once (``ranking.serving.shared_work``: one owner-state round trip, one user
vector), then runs each widget's own stages: a personal list through ``ranking.serving.serve``, "because you
viewed" groups and similar items through ``ranking.pipeline.anchored``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments import services as experiments
from ranking.artifacts import get_active_model
from ranking.pipeline import online, stages
from ranking.pipeline.anchored import anchor_groups, similar_list
from ranking.pipeline.responses import DEGRADED, LATENCY, REQUESTS, AnchorGroup, RecommendedItem
from ranking.pipeline.state import RequestState
from ranking.serving import (
    MAX_EXCLUDE_REQUESTS,
    RecommendRequest,
    experiment_unit,
    items_of,
    owners_of,
    read_shared,
    serve,
    shared_work,
)
from ranking.shown import SHOWN, remember_shown

PAGE_WIDGET_KINDS = ("recommendations", "because_you_viewed", "similar")
MAX_PAGE_WIDGETS = 8


@dataclass(frozen=True)
class PageWidget:
    kind: str  # one of PAGE_WIDGET_KINDS
    surface: str = "home"  # recommendations: the surface (rules, experiments)
    count: int = 10
    category: str | None = None  # recommendations: only this category
    item_id: str = ""  # similar: the anchor (default: the page's context item)
    groups: int = 2  # because_you_viewed: at most this many rows


@dataclass(frozen=True)
class PageRequest:
    customer_id: str = ""
    session_id: str = ""
    widgets: tuple[PageWidget, ...] = ()
    context_item_id: str = ""
    context_category: str = ""
    exclude_request_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PageWidgetResult:
    kind: str
    request_id: str
    surface: str
    items: tuple[RecommendedItem, ...]
    groups: tuple[AnchorGroup, ...]
    experiment: str | None
    variant: str | None


@dataclass(frozen=True)
class Page:
    widgets: tuple[PageWidgetResult, ...]
    model_version: int | None
    degraded: bool


class PageWidgetError(ValueError):
    """A widget the page cannot answer (e.g. a similar-items widget naming an unknown item)."""

    def __init__(self, index: int, field: str, message: str) -> None:
        super().__init__(f"widgets[{index}].{field}: {message}")
        self.index, self.field, self.message = index, field, message


def recommend_page(request: PageRequest) -> Page:
    """Several widgets of one page in one call, in the order given, no item twice across them (nor any item of the
    ``exclude_request_ids`` answers, nor a dismissed one), each with its own request id and reasons. The pipeline's
    shared work is done once: one owner-state round trip, one user vector. Not served from the list cache (a page's
    lists depend on each other); each widget's impression is logged under its own request id."""
    started = time.perf_counter()
    personal, owners = owners_of(customer_id=request.customer_id, session_id=request.session_id)
    owner = owners[0] if owners else ""
    anchors: dict[int, int] = {}
    for index, widget in enumerate(request.widgets):
        if widget.kind == "similar":
            item_id = widget.item_id or request.context_item_id
            if not item_id:
                raise PageWidgetError(index, "item_id", "Required (or the page's context_item_id).")
            pk = online.item_pk(item_id)
            if pk is None:
                raise PageWidgetError(index, "item_id", f"No item with id {item_id!r}.")
            anchors[index] = pk
    model = get_active_model()
    excluded_requests = request.exclude_request_ids[:MAX_EXCLUDE_REQUESTS] if owner else ()
    pending_shown = SHOWN.pending(owners, excluded_requests) if excluded_requests else None
    redis_ok = True
    prefetched: Sequence[Any] | None = None
    read_seconds = 0.0
    if owners:
        read_started = time.perf_counter()
        prefetched = read_shared(owners, excluded_requests)
        read_seconds = time.perf_counter() - read_started
        if prefetched is None:
            redis_ok = False
            DEGRADED.labels("redis").inc()
    shared = shared_work(
        owners, prefetched, redis_ok, model=model, context_item_id=request.context_item_id,
        context_category=request.context_category, excluded_requests=excluded_requests, pending_shown=pending_shown,
        read_seconds=read_seconds,
    )  # fmt: skip
    page_shown = np.union1d(shared.read.dismissed_pks, shared.shown)
    if shared.context_item_pk is not None:  # the item on the page is recommended in none of its widgets
        page_shown = np.union1d(page_shown, [shared.context_item_pk])
    degraded = model is None or shared.read.source == "postgres"
    results: list[PageWidgetResult] = []
    answers: dict[str, list[int]] = {}
    had: np.ndarray | None = None
    for index, widget in enumerate(request.widgets):
        request_id = uuid.uuid4().hex
        # Every widget, the similar one included: its impression carries the page's customer or session.
        unit = experiment_unit(owner, request.session_id, request_id)
        items: tuple[RecommendedItem, ...] = ()
        groups: tuple[AnchorGroup, ...] = ()
        if widget.kind == "recommendations":
            surface = widget.surface
            assignment = experiments.assign(surface=surface, unit_id=unit)
            value = serve(
                RecommendRequest(
                    customer_id=request.customer_id, session_id=request.session_id, surface=surface,
                    count=widget.count, category=widget.category, context_item_id=request.context_item_id,
                    context_category=request.context_category,
                ),
                owners=owners, config=assignment.config, model=model, variant=assignment.variant,
                request_id=request_id, shared=shared, page_exclude=page_shown,
            )  # fmt: skip
            items, pks = items_of(value), np.asarray(value["item_pks"], np.int64)
            degraded |= value["degraded"]
        elif widget.kind == "because_you_viewed":
            surface = "because_you_viewed"
            assignment = experiments.assign(surface=surface, unit_id=unit)
            found: list[AnchorGroup] = []
            pks = np.empty(0, np.int64)
            if model is not None and personal and owners:
                found, pks = anchor_groups(
                    model, shared.own_history, count=widget.count, groups=widget.groups, exclude=page_shown
                )
            groups = tuple(found)
        else:
            surface = "similar"
            assignment = experiments.assign(surface=surface, unit_id=unit)
            if personal and had is None:  # on a personal page, not what the owner already has (bought or rated)
                owned = RequestState(surface=surface, count=0, now=time.time(), history=shared.own_history)
                owned.had_pks, owned.had_types = shared.read.had_pks, shared.read.had_types
                had = stages.had_items(owned, assignment.config)  # the arm's exclude_purchased / exclude_rated
            exclude = page_shown if had is None else np.union1d(page_shown, had)
            listed, pks = similar_list(model, anchors[index], count=widget.count, exclude=exclude)
            items = tuple(listed)
        page_shown = np.union1d(page_shown, pks)
        answers[request_id] = pks.tolist()
        if redis_ok:
            experiments.impression_log(
                request_id=request_id, surface=surface, customer_id=request.customer_id if personal else "",
                session_id=request.session_id, assignment=assignment, item_pks=pks.tolist(),
                model_version=model.version_id if model else None,
                latency_ms=(time.perf_counter() - started) * 1000,
            )  # fmt: skip
        results.append(
            PageWidgetResult(
                widget.kind, request_id, surface, items, groups, assignment.experiment_key, assignment.variant
            )
        )
    if owner and redis_ok:
        remember_shown({owner: answers})
    REQUESTS.labels("page", "page", "-", "miss").inc()
    LATENCY.labels("page", "page", "-").observe(time.perf_counter() - started)
    return Page(tuple(results), model.version_id if model else None, degraded)
