"""The request state the pipeline's stages pass along, the constants they share, and what a stage needs to know of
a model version. Pure: numpy only (no ORM, no Redis, no settings).

Serving (``ranking.serving`` through ``ranking.pipeline.online``) and offline evaluation / the ranker's training
rows (``ranking.pipeline.offline``) fill the same :class:`RequestState` and run the same stages on it
(``ranking.pipeline.stages``); only where the inputs come from differs (Redis/Postgres online, the training log
offline).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ranking import retrieval
from ranking.arrays import isin
from ranking.ranker import BLEND_GROUPS, scaled_blend_weights
from ranking.rerank import RerankResult
from ranking.retrieval import CandidateSet, SourceHits
from ranking.sources import ADD_TO_CART, CLICK, PURCHASE, RATING, VIEW

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Candidates each source contributes before the merge.
QUOTAS: dict[str, int] = {
    "ann": 100, "item_knn": 100, "ease": 100, "content": 40, "fbt": 30, "trending": 40, "popular": 40, "new": 20,
}  # fmt: skip
HISTORY_LIMIT = 200  # a customer's latest events, as the online state keeps them
ANCHORS = 20  # most recent distinct history items whose neighbours are retrieved
ANCHOR_DECAY = 0.85  # weight of the i-th most recent anchor: ANCHOR_DECAY ** i
CTR_HOURS = 24  # the online item features' click-through window
# Neighbour sources: retrieval name -> array prefix of the version.
NEIGHBOUR_TABLES: tuple[tuple[str, str], ...] = (
    ("item_knn", "knn"), ("ease", "ease"), ("content", "content"), ("fbt", "fbt"),
)  # fmt: skip
VERBS: dict[int, str] = {VIEW: "viewed", CLICK: "viewed", ADD_TO_CART: "added", PURCHASE: "bought", RATING: "rated"}
# How much an event says about the item, weakest first: the explanation names the strongest (History.strongest_types).
_BY_STRENGTH = np.array([VIEW, CLICK, ADD_TO_CART, RATING, PURCHASE], np.int64)
_STRENGTH = np.zeros(int(_BY_STRENGTH.max()) + 1, np.int64)
_STRENGTH[_BY_STRENGTH] = np.arange(_BY_STRENGTH.size)

# --- Serving modes ------------------------------------------------------------------------------------------------

PIPELINE = "pipeline"
SERVE_KEY = "serve"
# Source names as training/evaluation spells them -> the retrieval source that serves them.
SOURCE_ALIASES: dict[str, str] = {"als": "ann", "popularity": "popular", "knn": "item_knn"}


def fbt_quota(surface: str) -> int:
    """Co-purchase fills half its quota except where a basket is in view (the offline lists are "home")."""
    return QUOTAS["fbt"] if surface in ("cart", "item", "checkout") else QUOTAS["fbt"] // 2


def anchor_weights(n: int, decay: float = ANCHOR_DECAY, floor: float = 0.0) -> npt.NDArray[np.float32]:
    """The i-th most recent anchor's weight, ``floor + (1 - floor) * decay ** i``: recency on top of a share every
    history item keeps (0: recency only; 1: every anchor alike)."""
    recency = np.float32(decay) ** np.arange(n, dtype=np.float32)
    return (np.float32(floor) + np.float32(1.0 - floor) * recency).astype(np.float32)


@dataclass(frozen=True)
class RetrievalParams:
    """The retrieval knobs that depend on the shop's data, chosen on validation at training (``ranking.tuning``)
    and recorded in the version's params: how many distinct history items anchor the neighbour sources and how
    much an older anchor counts (``anchor_floor + (1 - anchor_floor) * anchor_decay ** i`` for the i-th most recent,
    :func:`anchor_weights`; decay 1.0 or floor 1.0: no recency weighting). The defaults are the values these were
    constants at (the demo's shape: recent views matter most).

    The floor lets one version answer both questions a "for you" list is asked: what the customer does next (the
    latest anchors, weighted up) and what else fits their whole history (every anchor keeps the floor's share); on
    MovieLens 100K recency alone loses half the NDCG@10 of a random per-user hold-out, no recency loses a fifth of a
    temporal one."""

    anchors: int = ANCHORS
    anchor_decay: float = ANCHOR_DECAY
    anchor_floor: float = 0.0
    # EASE scores from the whole online history, every item alike (its classical form, X_u B), while the other
    # neighbour sources keep the anchors above: on MovieLens 100K the recent anchors cost EASE a fifth of a random
    # per-user hold-out's NDCG@10 (docs/models.md, "EASE over the whole history").
    ease_whole_history: bool = False
    # The blend's source weights when the version tuned them (ranking.ranker.scaled_blend_weights), else None: the
    # defaults. A request's experiment config (VariantConfig.blend_weights) still wins over both.
    blend_weights: Mapping[str, float] | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any] | Any | None) -> RetrievalParams:
        """From a version's params (a mapping, e.g. meta.json's) or a ``TrainParams``; defaults for what is missing
        or out of range (an older version recorded none)."""
        if params is None:
            return cls()
        get = params.get if isinstance(params, Mapping) else (lambda name, default=None: getattr(params, name, default))
        raw_anchors: Any = get("anchors", ANCHORS)
        raw_decay: Any = get("anchor_decay", ANCHOR_DECAY)
        raw_floor: Any = get("anchor_floor", 0.0)
        try:
            anchors, decay, floor = int(raw_anchors), float(raw_decay), float(raw_floor if raw_floor is not None else 0)
        except (TypeError, ValueError):
            return cls()
        if not 1 <= anchors <= HISTORY_LIMIT or not 0.0 < decay <= 1.0 or not 0.0 <= floor <= 1.0:
            return cls()
        multipliers: dict[str, float] = {}
        for group in BLEND_GROUPS:
            raw: Any = get(group, 1.0)
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and value >= 0:
                multipliers[group] = value
        whole = get("ease_whole_history", False) is True
        return cls(anchors, decay, floor, whole, scaled_blend_weights(multipliers))


def serve_source(mode: str) -> str | None:
    """The retrieval source a serving mode restricts the candidates to (``"source:ease"`` -> ``"ease"``), None for
    ``"pipeline"``. Raises ValueError for anything else, naming the accepted values."""
    if mode == PIPELINE:
        return None
    if mode.startswith("source:"):
        name = SOURCE_ALIASES.get(mode[7:], mode[7:])
        if name in retrieval.SOURCE_INDEX:
            return name
    accepted = ", ".join(f"source:{s}" for s in (*retrieval.SOURCES, *SOURCE_ALIASES))
    raise ValueError(f"serve must be 'pipeline' or one of {accepted}, not {mode!r}")


def serve_mode_of(meta: Mapping[str, Any]) -> str:
    """The serving mode a version records: ``meta["serve"]`` or ``meta["params"]["serve"]``; "pipeline" when it
    records none or a value this code does not know (the safe default: every source, ranker or blend)."""
    params = meta.get("params")
    value = meta.get(SERVE_KEY) or (params.get(SERVE_KEY) if isinstance(params, Mapping) else None) or PIPELINE
    try:
        serve_source(str(value))
    except ValueError:
        return PIPELINE
    return str(value)


# --- What a stage needs of a model version ------------------------------------------------------------------------


class ModelView(Protocol):
    """The part of a loaded version the stages read: ``ranking.artifacts.ActiveModel`` online,
    ``ranking.pipeline.offline.TrainedModel`` (a view of ``ranking.training.TrainedSources``) offline."""

    @property
    def item_ids(self) -> IntArray: ...

    @property
    def popularity(self) -> np.ndarray: ...

    @property
    def trending(self) -> np.ndarray: ...

    @property
    def index(self) -> Any: ...

    def has(self, name: str) -> bool: ...

    def array(self, name: str) -> np.ndarray: ...

    def item_index(self, item_pks: npt.ArrayLike) -> IntArray: ...

    def history_confidences(
        self, item_idx: npt.ArrayLike, types: npt.ArrayLike, values: npt.ArrayLike, age_days: npt.ArrayLike
    ) -> tuple[IntArray, npt.NDArray[np.float32]]: ...

    def fold_in(self, item_idx: npt.ArrayLike, confidences: npt.ArrayLike) -> npt.NDArray[np.float32]: ...

    def search(self, query: npt.ArrayLike, k: int) -> tuple[IntArray, npt.NDArray[np.float32]]: ...


class Ranker(Protocol):
    """A LambdaMART ranker: ``ranking.compiled_ranker.ServingRanker`` online, a plain booster offline."""

    @property
    def engine(self) -> str: ...

    def score(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


# --- The request state --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class History:
    """An owner's latest events, newest first, as catalog pks (never changed in place: a changed history is a new
    one, so what is worked out of it once can be kept)."""

    pks: IntArray
    types: IntArray
    ts: FloatArray

    @classmethod
    def empty(cls) -> History:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))

    @classmethod
    def merged(cls, histories: list[History], limit: int) -> History:
        """Several owners' histories as one, newest first."""
        ts = np.concatenate([h.ts for h in histories])
        order = np.argsort(-ts, kind="stable")[:limit]
        return cls(
            np.concatenate([h.pks for h in histories])[order],
            np.concatenate([h.types for h in histories])[order],
            ts[order],
        )

    def with_item(self, pk: int, type_: int, ts: float) -> History:
        """This history with one more event in front (the page's item as the newest view)."""
        return History(
            np.concatenate([[pk], self.pks]).astype(np.int64),
            np.concatenate([[type_], self.types]).astype(np.int64),
            np.concatenate([[ts], self.ts]),
        )

    def without_items(self, pks: IntArray) -> History:
        """This history without any event of these items: the owner's dismissed ("not interested") ones, which then
        anchor no neighbours, name no reason and no longer speak for the owner's taste, as training drops every
        event of a dismissed pair (``ranking.dataset.dismissed_pairs``)."""
        if not pks.size or not self.pks.size:
            return self
        dropped = isin(self.pks, pks)
        if not dropped.any():
            return self
        keep = ~dropped
        return History(self.pks[keep], self.types[keep], self.ts[keep])

    def of_types(self, *types: int) -> IntArray:
        """The distinct items of these event types (e.g. purchases, ratings)."""
        return np.unique(self.pks[isin(self.types, np.array(types, np.int64))])

    def strongest_types(self, pks: IntArray) -> IntArray:
        """Per pk, the strongest event type the history holds for it (a purchase over a rating, an add to cart, a
        click, a view; 0 when it holds none): what an explanation names ("Because you bought ..." for an item
        bought four times and clicked since)."""
        pks = np.asarray(pks, np.int64)
        if not pks.size or not self.pks.size:
            return np.zeros(pks.size, np.int64)
        # A type outside the table (none is written today: a dismissal never enters a history) counts as a view.
        types = np.where((self.types >= 0) & (self.types < _STRENGTH.size), self.types, VIEW)
        strength = np.where(self.pks[None, :] == pks[:, None], _STRENGTH[types][None, :], -1).max(axis=1)
        return np.where(strength >= 0, _BY_STRENGTH[np.maximum(strength, 0)], 0)

    def anchors(self, limit: int) -> tuple[IntArray, IntArray]:
        """The latest ``limit`` distinct items (newest first) and the event type that made each an anchor."""
        order = self._first_events[:limit]
        return self.pks[order], self.types[order]

    @functools.cached_property
    def _first_events(self) -> IntArray:
        """The position of each distinct item's newest event, newest first (read by every stage that asks for
        anchors: retrieval, the ranker's features, EASE over the whole history; worked out once)."""
        _, first = np.unique(self.pks, return_index=True)
        return np.sort(first)


@dataclass(frozen=True, eq=False)
class ItemAttributes:
    """Per candidate (aligned with ``CandidateSet.item_idx``): catalog category and brand pks (-1 none), whether it
    can be shown, price (NaN unknown) and listing time."""

    category: IntArray
    brand: IntArray
    available: npt.NDArray[np.bool_]
    price: FloatArray
    created_ts: FloatArray


@dataclass(frozen=True, eq=False)
class GlobalLists:
    """The lists that are the same for everyone, as catalog pks: newest arrivals, trending and popular (the popular
    list with the page's category first when there is one; without a model, the recently popular fallback)."""

    new: IntArray
    trending: retrieval.SourceHits
    popular: retrieval.SourceHits


@dataclass
class RequestState:
    """One list's way through the stages. Inputs first (filled by the adapters), then each stage's output."""

    surface: str
    count: int
    now: float
    mode: str = PIPELINE  # the version's serving mode (``serve_mode_of``)
    history: History = field(default_factory=History.empty)
    # "Not interested": the owner's dismissed items (pks ascending) and when each was dismissed (Unix time).
    dismissed_pks: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    dismissed_ts: FloatArray = field(default_factory=lambda: np.empty(0, np.float64))
    # What the owner already has over their whole history, not only the latest HISTORY_LIMIT events: items bought or
    # rated (pks, and the event type of each pair; events.keys.had online, the training log offline).
    had_pks: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    had_types: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    # Every item this list leaves out whatever it scores (what the owner has, dismissed, shown earlier, asked to
    # exclude; pks, sorted and unique), known before retrieval so that the global lists' quotas count past them.
    left_out: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    affinity: Mapping[int, float] = field(default_factory=dict)
    context_item_pk: int | None = None
    context_category_pk: int | None = None
    degraded: bool = False
    retrieval: RetrievalParams = field(default_factory=RetrievalParams)  # the version's (``RetrievalParams.of``)
    # Stage outputs.
    user_vector: npt.NDArray[np.float32] | None = None
    hits: dict[str, SourceHits] = field(default_factory=dict)
    candidates: CandidateSet | None = None
    attributes: ItemAttributes | None = None
    scores: npt.NDArray[np.float32] | None = None
    scorer: str = "blend"  # "lambdamart", "blend" or "source:<name>"
    engine: str | None = None  # lleaves / lightgbm when the ranker scored, None otherwise
    diversity: str = "greedy"
    result: RerankResult | None = None

    @property
    def cand(self) -> IntArray:
        assert self.candidates is not None
        return self.candidates.item_idx
