"""The pipeline's stages: history (with the page context) -> user vector -> retrieve -> score (ranker, blend or
one source) -> re-rank -> explain, each a function of the :class:`~ranking.pipeline.state.RequestState` and what
the stage reads. Pure: numpy only; whatever comes from Redis or Postgres is passed in (arrays, a model view, or a
callable the adapter provides, e.g. the click-through rates of the candidates).

Serving (``ranking.serving``) and offline evaluation / the ranker's training rows (``ranking.pipeline.offline``)
call exactly these functions, so what is evaluated and learnt from is what is served.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from experiments.config import VariantConfig
from ranking import rerank as rr
from ranking import retrieval
from ranking.arrays import isin
from ranking.pipeline.state import (
    ANCHOR_DECAY,
    HISTORY_LIMIT,
    NEIGHBOUR_TABLES,
    PIPELINE,
    QUOTAS,
    VERBS,
    GlobalLists,
    IntArray,
    ItemAttributes,
    ModelView,
    Ranker,
    RequestState,
    anchor_weights,
    fbt_quota,
    serve_source,
)
from ranking.ranker import FEATURE_NAMES, blend_scores, build_features, candidate_context
from ranking.sources import PURCHASE, RATING, VIEW

# A page's category counts as this much fresh interest: one view's worth (events.features.INTEREST_WEIGHTS), so it
# decides a visitor's first list and only nudges a long history.
CONTEXT_CATEGORY_WEIGHT = 1.0
NEIGHBOUR_SOURCES = frozenset({"item_knn", "ease", "content"})

# "Not interested": the dismissed items' nearest neighbours (these tables) lose up to DISMISS_DEMOTION of the list's
# score range, halving every DISMISS_HALF_LIFE_SECONDS (a while, not forever: tastes change).
DISMISS_TABLES = ("knn", "ease")
DISMISS_NEIGHBOURS = 10
DISMISS_DEMOTION = 0.5
DISMISS_HALF_LIFE_SECONDS = 3 * 86_400.0
# A page's category lifts at most this share of the list's slots (its best candidates): with an arm's diversity
# cap off nothing else would keep the lift from filling the list with the category.
NUDGE_MAX_SHARE = 0.5

CtrFn = Callable[[IntArray], npt.NDArray[np.float32] | None]


# --- history ------------------------------------------------------------------------------------------------------


def forget_dismissed(state: RequestState) -> None:
    """Every event of an item the owner dismissed leaves the history (``History.without_items``): a "not
    interested" item is no anchor, names no reason and no longer shapes the user vector."""
    state.history = state.history.without_items(state.dismissed_pks)


def with_context(state: RequestState) -> None:
    """The page's item as the newest view and its category as a fresh interest: retrieval, the user vector and the
    ranker's features then see them like a real view, while nothing is written to the visitor's history."""
    if state.context_item_pk is not None:
        state.history = state.history.with_item(state.context_item_pk, VIEW, state.now)
    if state.context_category_pk is not None:
        pk = state.context_category_pk
        state.affinity = {**state.affinity, pk: state.affinity.get(pk, 0.0) + CONTEXT_CATEGORY_WEIGHT}


def had_items(state: RequestState, config: VariantConfig) -> IntArray:
    """What the owner already has and the config leaves out of personal lists: purchases and/or rated items, from the
    history and from the had set (the whole history's, beyond the latest ``HISTORY_LIMIT`` events)."""
    types = [t for t, on in ((PURCHASE, config.exclude_purchased), (RATING, config.exclude_rated)) if on]
    if not types:
        return np.empty(0, np.int64)
    recent = state.history.of_types(*types)
    if not state.had_pks.size:
        return recent
    return np.union1d(recent, state.had_pks[isin(state.had_types, np.array(types, np.int64))])


# --- user vector --------------------------------------------------------------------------------------------------


def user_vector(state: RequestState, model: ModelView | None) -> None:
    """Fold the history into the version's ALS factors (None without a model, factors or a known history item)."""
    history = state.history
    state.user_vector = None
    if model is None or not history.pks.size or not model.has("als_item_factors"):
        return
    idx = model.item_index(history.pks)
    if not (idx >= 0).any():
        return
    values = np.full(idx.size, np.nan)  # the online history has no event values: unknown, not zero
    items, confidences = model.history_confidences(idx, history.types, values, (state.now - history.ts) / 86_400)
    if items.size:
        state.user_vector = model.fold_in(items, confidences)


# --- retrieve -----------------------------------------------------------------------------------------------------


def to_pks(model: ModelView, hits: retrieval.SourceHits) -> retrieval.SourceHits:
    """Model indices -> catalog primary keys, the ids every later stage speaks."""
    ids = model.item_ids
    valid = hits.item_idx >= 0
    anchors = np.where(hits.anchor >= 0, ids[np.maximum(hits.anchor, 0)], -1)
    return retrieval.SourceHits(ids[hits.item_idx[valid]], hits.score[valid], anchors[valid])


def neighbour_hits(
    model: ModelView, prefix: str, anchors_idx: IntArray, k: int, decay: float = ANCHOR_DECAY, floor: float = 0.0
) -> retrieval.SourceHits:
    """The aggregated neighbours of the anchors (newest first) in one of the version's neighbour tables (model
    indices), the i-th anchor weighted ``floor + (1 - floor) * decay ** i``. EASE scores from its full matrix
    when the version keeps it (small catalogs, ``TrainParams.ease_full_max_items``): every item, not only each
    anchor's top neighbours."""
    if not model.has(f"{prefix}_idx") or anchors_idx.size == 0:
        return retrieval.SourceHits.empty()
    weights = anchor_weights(anchors_idx.size, decay, floor)
    if prefix == "ease" and model.has("ease_b"):
        return retrieval.dense_neighbours(anchors_idx, weights, model.array("ease_b"), k)
    return retrieval.neighbours(anchors_idx, weights, model.array(f"{prefix}_idx"), model.array(f"{prefix}_score"), k)


def retrieve(state: RequestState, model: ModelView | None, lists: GlobalLists, pinned: IntArray) -> None:
    """Every source's hits (catalog pks), or only the one the serving mode names (the others are not computed),
    merged; pinned items missing from the candidates join them so the re-ranker can place them."""
    only = serve_source(state.mode)
    if only is not None:
        chosen = source_hits(state, model, lists, only=only).get(only, retrieval.SourceHits.empty())
        if int((~isin(chosen.item_idx, state.left_out)).sum()) >= state.count:
            _merge(state, {only: chosen}, pinned)
            return
        # The source finds too few for this request (a cold customer, an unknown history): the whole pipeline
        # answers instead of a short or empty list.
        state.mode = PIPELINE
    _merge(state, source_hits(state, model, lists), pinned)


def source_hits(
    state: RequestState, model: ModelView | None, lists: GlobalLists, *, only: str | None = None
) -> dict[str, retrieval.SourceHits]:
    """Each source's hits, in catalog pks: all of them, or ``only`` that one."""

    def wanted(source: str) -> bool:
        return only is None or only == source

    hits: dict[str, retrieval.SourceHits] = {}
    if wanted("new"):
        new = lists.new
        hits["new"] = retrieval.SourceHits(
            new, np.linspace(1.0, 0.5, new.size).astype(np.float32), np.full(new.size, -1)
        )
    if model is None:
        if wanted("popular"):
            hits["popular"] = lists.popular
        return hits
    if wanted("ann") and state.user_vector is not None and model.index is not None:
        idx, scores = model.search(state.user_vector, QUOTAS["ann"])
        keep = idx >= 0
        hits["ann"] = to_pks(model, retrieval.SourceHits(idx[keep], scores[keep], np.full(int(keep.sum()), -1)))
    tables = [(source, prefix) for source, prefix in NEIGHBOUR_TABLES if wanted(source)]
    if tables:
        anchor_pks, _ = state.history.anchors(state.retrieval.anchors)
        anchor_idx = model.item_index(anchor_pks)
        anchor_idx = anchor_idx[anchor_idx >= 0]
        for source, prefix in tables:
            k = fbt_quota(state.surface) if source == "fbt" else QUOTAS[source]
            if source == "ease" and state.retrieval.ease_whole_history:
                whole_idx = model.item_index(state.history.anchors(HISTORY_LIMIT)[0])
                found = neighbour_hits(model, prefix, whole_idx[whole_idx >= 0], k, 1.0, 1.0)
            else:
                found = neighbour_hits(
                    model, prefix, anchor_idx, k, state.retrieval.anchor_decay, state.retrieval.anchor_floor
                )
            hits[source] = to_pks(model, found)
    for source, top in (("trending", lists.trending), ("popular", lists.popular)):
        if wanted(source):
            hits[source] = global_head(top, QUOTAS[source], state.left_out)
    return hits


def global_head(top: retrieval.SourceHits, quota: int, left_out: IntArray) -> retrieval.SourceHits:
    """The head of a top list (catalog pks) that holds ``quota`` items this list can show: items it leaves out do
    not use up the quota (a customer who had bought most of the popular items got a two-item list from a version
    serving popularity; found by a seventh tester, 6 December). They stay in the head, where the re-ranker drops
    them, so every item keeps its rank in the list (the ranker's rank features and the blend read positions).
    Reads at most ``quota + left_out.size`` of the list."""
    n = quota
    if left_out.size:
        showable = np.flatnonzero(~isin(top.item_idx[: quota + left_out.size], left_out))
        n = int(showable[quota - 1]) + 1 if showable.size >= quota else quota + left_out.size
    return retrieval.SourceHits(top.item_idx[:n], top.score[:n], top.anchor[:n])


def leave_out(state: RequestState, config: VariantConfig, *more: npt.ArrayLike) -> None:
    """``state.left_out``: what the owner has (``had_items``), what they dismissed, and ``more`` (earlier answers'
    items, the request's exclusions, ...), before retrieval."""
    parts = [had_items(state, config), state.dismissed_pks, *more]
    state.left_out = np.unique(np.concatenate([np.asarray(part, np.int64).ravel() for part in parts]))


def _merge(state: RequestState, hits: dict[str, retrieval.SourceHits], pinned: IntArray) -> None:
    candidates = retrieval.merge(hits)
    missing = pinned[~isin(pinned, candidates.item_idx)]
    if missing.size:
        hits["pinned"] = retrieval.SourceHits(missing, np.zeros(missing.size, np.float32), np.full(missing.size, -1))
        candidates = retrieval.merge(hits)
    state.hits, state.candidates = hits, candidates


def restrict_category(state: RequestState, category_pk: int | None) -> None:
    """Only items of the request's category (an unknown category: nothing)."""
    assert state.attributes is not None
    a = state.attributes
    wanted = a.category == (category_pk if category_pk is not None else -2)
    state.attributes = ItemAttributes(a.category, a.brand, a.available & wanted, a.price, a.created_ts)


# --- score --------------------------------------------------------------------------------------------------------


def features(state: RequestState, model: ModelView, ctr: CtrFn) -> npt.NDArray[np.float32]:
    """The ranker's feature matrix of the candidates, as of ``state.now`` (the ranker's training rows are built by
    this same function, fed with each user's history as of the split's reference time)."""
    assert state.candidates is not None
    assert state.attributes is not None
    history, a = state.history, state.attributes
    last_category = -1
    if history.pks.size:
        last = model.item_index(history.pks[:1])[0]
        last_category = int(model.array("item_category")[last]) if last >= 0 else -1
    context = candidate_context(
        model_idx=model.item_index(state.cand), popularity=model.popularity, trend=model.trending,
        category=a.category, price=a.price, created_ts=a.created_ts, now=state.now,
        item_factors=model.array("als_item_factors") if model.has("als_item_factors") else None,
        user_vector=state.user_vector, ctr=ctr(state.cand), category_affinity=state.affinity,
        history_ids=history.anchors(HISTORY_LIMIT)[0], last_category=last_category,
    )  # fmt: skip
    X = build_features(state.candidates, context)
    assert X.shape[1] == len(FEATURE_NAMES)
    return X


def score(
    state: RequestState,
    model: ModelView | None,
    ranker: Ranker | None,
    config: VariantConfig,
    ctr: CtrFn,
) -> None:
    """One source's own score when the serving mode names a source; else LambdaMART when the version has a ranker
    and the config wants it; else the blended score."""
    assert state.candidates is not None
    only = serve_source(state.mode)
    if only is not None:
        state.scores = state.candidates.source_score[:, retrieval.SOURCE_INDEX[only]].astype(np.float32)
        state.scorer, state.engine = state.mode, None
        return
    if ranker is None or model is None or not config.ranker:
        state.scores = blend_scores(state.candidates, config.blend_weights or state.retrieval.blend_weights)
        state.scorer, state.engine = "blend", None
        return
    state.scores = ranker.score(features(state, model, ctr))
    state.scorer, state.engine = "lambdamart", ranker.engine


def dismissal_penalty(state: RequestState, model: ModelView | None) -> npt.NDArray[np.float64]:
    """Per candidate, how much a dismissal weighs on it (0..1): the decay of the latest dismissal among the items
    whose nearest neighbours (in the version's kNN / EASE tables) it is. Zero without dismissals or a model."""
    assert state.candidates is not None
    penalty = np.zeros(state.cand.size, np.float64)
    if model is None or state.dismissed_pks.size == 0:
        return penalty
    idx = model.item_index(state.dismissed_pks)
    known = idx >= 0
    if not known.any():
        return penalty
    weight = 0.5 ** (np.maximum(state.now - state.dismissed_ts[known], 0.0) / DISMISS_HALF_LIFE_SECONDS)
    ids = model.item_ids
    for prefix in DISMISS_TABLES:
        if not model.has(f"{prefix}_idx"):
            continue
        neighbours = np.asarray(model.array(f"{prefix}_idx"))[idx[known], :DISMISS_NEIGHBOURS]
        valid = neighbours >= 0
        pks = ids[np.maximum(neighbours, 0)][valid]
        weights = np.broadcast_to(weight[:, None], neighbours.shape)[valid]
        pos = np.searchsorted(state.cand, pks)
        hit = (pos < state.cand.size) & (state.cand[np.minimum(pos, state.cand.size - 1)] == pks)
        np.maximum.at(penalty, pos[hit], weights[hit])
    return penalty


def demote_dismissed(state: RequestState, model: ModelView | None) -> None:
    """Lower the scores of the dismissed items' neighbours by up to ``DISMISS_DEMOTION`` of the score range."""
    assert state.scores is not None
    penalty = dismissal_penalty(state, model)
    if not penalty.any():
        return
    scores = state.scores.astype(np.float64)
    spread = float(scores.max() - scores.min()) or 1.0
    state.scores = (scores - DISMISS_DEMOTION * spread * penalty).astype(np.float32)


def nudge_context_category(state: RequestState) -> None:
    """Lift the page category's candidates by that category's share of the visitor's interest (its affinity after
    :func:`with_context`), in units of the score range: a whole range for a visitor with no other interest, so the
    category's best items come first, little for a long history. Only the category's best
    ``NUDGE_MAX_SHARE`` of the list's slots are lifted, so the list stays a nudge, not a filter, even where an arm
    turns the diversity cap off (a reviewer, 6 December). Runs before :func:`demote_dismissed`, so a dismissal's
    demotion is not undone by the page. The ranker's category-affinity feature alone did not do it: trained on
    customers with histories, a shipped ranker scored a category the shop sells little of below everything, and a
    garden page's list had no garden item (a tenth tester, 6 December)."""
    pk = state.context_category_pk
    if pk is None or state.scores is None or state.attributes is None or not state.scores.size:
        return
    total = sum(state.affinity.values())
    share = state.affinity.get(pk, 0.0) / total if total > 0 else 0.0
    of_category = np.flatnonzero(state.attributes.category == pk)
    if share <= 0 or not of_category.size:
        return
    scores = state.scores.astype(np.float64)
    spread = float(scores.max() - scores.min()) or 1.0
    slots = max(1, int(np.ceil(NUDGE_MAX_SHARE * state.count)))
    best = of_category[np.argsort(-scores[of_category], kind="stable")[:slots]]
    scores[best] += share * spread
    state.scores = scores.astype(np.float32)


# --- re-rank ------------------------------------------------------------------------------------------------------


def seed_of(owner: str, request_id: str) -> int:
    return int(hashlib.blake2b(f"{owner}:{request_id}".encode(), digest_size=4).hexdigest(), 16)


def rerank(
    state: RequestState,
    config: VariantConfig,
    pin_rules: Sequence[rr.Rule],
    *,
    exclude: IntArray,
    exposure: npt.NDArray[np.float64],
    clicks: npt.NDArray[np.float64] | None,
    seed: int,
) -> None:
    """Availability, exclusions, business rules, diversity caps, exploration and pins (``ranking.rerank``)."""
    assert state.candidates is not None
    assert state.attributes is not None
    assert state.scores is not None
    a = state.attributes
    # Greedy with no cap to enforce is plain score order, and "off" gets there without the slot loop.
    plain = config.diversity == "greedy" and config.diversity_cap >= 1 and config.max_per_brand is None
    state.diversity = "off" if plain else config.diversity
    state.result = rr.rerank(
        rr.Candidates(
            item_idx=state.cand, score=state.scores.astype(np.float64), category=a.category, brand=a.brand,
            available=a.available, exposure=exposure, clicks=clicks,
        ),
        pin_rules,
        rr.RerankConfig(
            count=state.count, max_category_share=config.diversity_cap, max_per_brand=config.max_per_brand,
            exclude_idx=exclude, exploration_share=config.exploration_share, seed=seed,
            diversity=state.diversity, mmr_lambda=config.mmr_lambda, exploration=config.exploration,  # type: ignore[arg-type]
        ),
    )  # fmt: skip


# --- explain ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


class Titled(Protocol):
    """What an explanation reads of a catalog row (``catalog.selectors.ItemRow`` has both)."""

    title: str
    category_name: str | None


@dataclass(frozen=True)
class Explained:
    """One served item: its pk, score, the sources that found it and why it is shown."""

    pk: int
    score: float
    sources: tuple[str, ...]
    reason: Reason


def reason_for(
    source: str,
    sources: tuple[str, ...],
    anchor_title: str | None,
    anchor_type: int,
    category_name: str | None,
    pinned: bool,
    explored: bool,
) -> Reason:
    if pinned:
        return Reason("featured", "Featured")
    if explored:
        return Reason("discover", "Something new to discover")
    if anchor_title is not None:
        if "fbt" in sources and not NEIGHBOUR_SOURCES.intersection(sources):
            return Reason("bought_together", f"Frequently bought with {anchor_title}")
        verb = VERBS.get(anchor_type, "viewed")
        return Reason(f"because_you_{verb}", f"Because you {verb} {anchor_title}")
    if source == "trending" and category_name:
        return Reason("trending", f"Trending in {category_name}")
    if source == "trending":
        return Reason("trending", "Trending now")
    if source == "ann":
        return Reason("for_you", "Picked for your taste")
    if source == "new":
        return Reason("new_arrival", "New arrival")
    if source == "popular" and category_name:
        return Reason("popular", f"Popular in {category_name}")
    return Reason("popular", "Popular")


def anchor_pks_of(state: RequestState) -> IntArray:
    """The history items the final list's explanations may name (their rows are fetched with the items')."""
    assert state.candidates is not None
    assert state.result is not None
    anchors = state.candidates.anchor[np.searchsorted(state.cand, state.result.item_idx)]
    return anchors[anchors >= 0]


def explain(state: RequestState, rows: Mapping[int, Titled]) -> list[Explained]:
    """Why each final item is shown; items without a row (evicted while Postgres is down) are left out."""
    assert state.candidates is not None
    assert state.result is not None
    candidates, result = state.candidates, state.result
    # Each anchor named by the strongest thing the owner did with it (bought, then clicked again: "bought").
    at = np.searchsorted(state.cand, result.item_idx)
    anchors = candidates.anchor[at]
    named = np.unique(anchors)
    named = named[named >= 0]
    anchor_type = dict(zip(named.tolist(), state.history.strongest_types(named).tolist(), strict=True))
    # Per final item, as plain values at once (a few numpy calls for the list, not a few per item).
    found = (candidates.source_rank[at] < retrieval.NO_RANK).tolist()
    best = candidates.best_source[at].tolist()
    columns = zip(
        result.item_idx.tolist(), found, best, anchors.tolist(), result.score.tolist(), result.pinned.tolist(),
        result.explored.tolist(), strict=True,
    )  # fmt: skip
    out = []
    for pk, hits, best_source, anchor, score, pinned, explored in columns:
        row = rows.get(pk)
        if row is None:
            continue
        sources = tuple(name for name, hit in zip(retrieval.SOURCES, hits, strict=True) if hit)
        anchor_row = rows.get(anchor) if anchor >= 0 else None
        reason = reason_for(
            retrieval.SOURCES[best_source] if sources else "pinned", sources,
            anchor_row.title if anchor_row is not None else None, anchor_type.get(anchor) or VIEW, row.category_name,
            pinned, explored,
        )  # fmt: skip
        out.append(Explained(pk, round(score, 6), sources or ("pinned",), reason))
    return out
