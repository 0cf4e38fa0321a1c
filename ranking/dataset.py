"""Interactions as arrays: the id maps (model index <-> catalog primary key), the weighted user-item matrix and the
basket matrix every source trains on. ``ranking.selectors.dataset_load`` reads them from Postgres; everything else
here is pure, so the benchmarks build the same structures from in-memory data sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from events.features import DISMISS
from ranking.arrays import index_of
from ranking.sources import PURCHASE, SECONDS_PER_DAY, decay, event_weights

IntArray = npt.NDArray[np.int64]
REFERENCE_QUANTILE = 0.999


@dataclass(frozen=True, eq=False)
class ItemTable:
    """The catalog in model index order: ``item_ids`` (catalog.Item pks, ascending, so ``np.searchsorted`` maps a
    pk to its index), their category pks (-1 for none) and one text per item for the content vectors."""

    item_ids: npt.NDArray[np.int64]
    category: npt.NDArray[np.int32]
    texts: Sequence[str]
    # The ranker's item attributes (NaN: unknown): price, and when the item was listed (Unix time; offline, an
    # item listed after a split's reference time did not exist yet).
    price: npt.NDArray[np.float64] | None = None
    created_ts: npt.NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        if self.item_ids.size and np.any(np.diff(self.item_ids) <= 0):
            raise ValueError("item_ids must be strictly ascending")
        if not (self.item_ids.size == self.category.size == len(self.texts)):
            raise ValueError("item_ids, category and texts must have the same length")
        for name in ("price", "created_ts"):
            column = getattr(self, name)
            if column is not None and column.shape != self.item_ids.shape:
                raise ValueError(f"{name} must have one entry per item")

    def attribute(self, name: str) -> npt.NDArray[np.float64]:
        """``price`` or ``created_ts`` per item, all NaN when the table was built without them."""
        column = getattr(self, name)
        return np.full(self.n_items, np.nan) if column is None else np.asarray(column, np.float64)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    def index_of(self, item_pks: npt.ArrayLike) -> IntArray:
        """Model index of each pk, -1 for pks not in the table."""
        return index_of(self.item_ids, item_pks)


@dataclass(frozen=True, eq=False)
class InteractionLog:
    """One row per event, as parallel arrays. ``user`` indexes ``user_ids`` (customer pks, ascending) and is -1
    for anonymous events (a session without a customer); ``basket`` groups one order (-1: none)."""

    user: npt.NDArray[np.int32]
    item: npt.NDArray[np.int32]
    type: npt.NDArray[np.int8]
    value: npt.NDArray[np.float32]
    ts: npt.NDArray[np.float64]
    basket: npt.NDArray[np.int64]
    user_ids: npt.NDArray[np.int64]
    n_items: int

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    def __len__(self) -> int:
        return int(self.item.size)

    def subset(self, mask: npt.NDArray[np.bool_]) -> InteractionLog:
        """The events where ``mask`` holds, with the same id maps (indices stay comparable across subsets)."""
        return InteractionLog(
            user=self.user[mask],
            item=self.item[mask],
            type=self.type[mask],
            value=self.value[mask],
            ts=self.ts[mask],
            basket=self.basket[mask],
            user_ids=self.user_ids,
            n_items=self.n_items,
        )

    def time_range(self) -> tuple[float, float]:
        if self.ts.size == 0:
            return 0.0, 0.0
        return float(self.ts.min()), float(self.ts.max())

    def reference_ts(self) -> float:
        """The data's "now" for decays and temporal splits: the time by which 99.9 % of events had happened (the
        latest event when there are fewer than a thousand). A handful of stray events (a client with a skewed
        clock, demo clicks in a database whose history ended years ago) cannot move it and decay everything else
        to nothing; on a live stream it is minutes behind the latest event."""
        if self.ts.size == 0:
            return 0.0
        return float(np.quantile(self.ts, REFERENCE_QUANTILE, method="higher"))

    def user_event_counts(self) -> IntArray:
        """Distinct items per user (the "history length" the cold-user segment is defined on)."""
        known = self.user >= 0
        keys = np.unique(self.user[known].astype(np.int64) * self.n_items + self.item[known])
        return np.bincount(keys // max(self.n_items, 1), minlength=self.n_users).astype(np.int64)

    def item_user_counts(self) -> npt.NDArray[np.int32]:
        """Distinct users per item (popularity for novelty, "cold item" detection at serving time)."""
        known = self.user >= 0
        keys = np.unique(self.user[known].astype(np.int64) * self.n_items + self.item[known])
        return np.bincount(keys % max(self.n_items, 1), minlength=self.n_items).astype(np.int32)


@dataclass(frozen=True, eq=False)
class UserEvents:
    """A log's events grouped by user, newest first within a user: what the online state holds for a customer
    (its history in Redis is newest first too). Row ``indptr[u]:indptr[u + 1]`` of the arrays is user ``u``."""

    indptr: IntArray
    item: IntArray
    type: npt.NDArray[np.int8]
    value: npt.NDArray[np.float32]
    ts: npt.NDArray[np.float64]

    def of(self, user: int) -> slice:
        """The slice of ``user``'s events (empty for -1, a user without training data)."""
        if user < 0 or user + 1 >= self.indptr.size:
            return slice(0, 0)
        return slice(int(self.indptr[user]), int(self.indptr[user + 1]))


def user_events(log: InteractionLog) -> UserEvents:
    """Every known user's events, newest first (anonymous events left out). Events of the same moment (ratings saved
    in the same second, a batch sent without timestamps) come the later row first, as the online state orders them
    (the later interaction first: ``events.online.parse_history_columns``) and as the validation split counts them
    (the later row is the later event), so the history the offline pipeline anchors on is the one serving reads."""
    known = np.flatnonzero(log.user >= 0)[::-1]  # reversed: the stable sort keeps the later row of a tie first
    order = known[np.lexsort((-log.ts[known], log.user[known]))]
    counts = np.bincount(log.user[order], minlength=log.n_users)
    indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return UserEvents(indptr, log.item[order].astype(np.int64), log.type[order], log.value[order], log.ts[order])


def dismissed_pairs(
    customer: npt.NDArray[np.int64],
    item_idx: npt.NDArray[np.int64],
    type_: npt.NDArray[Any],
    session: Sequence[str] | npt.NDArray[np.object_] | None,
) -> npt.NDArray[np.bool_]:
    """Per event, whether its (owner, item) pair has a ``dismiss`` ("not interested"): training's negative signal.
    Those pairs leave the positives altogether, every event of them (the views that led to the dismissal too), and
    the dismissals themselves are no interest. The owner is the customer, or the session for anonymous events."""
    dismiss = type_ == DISMISS
    if not dismiss.any():
        return dismiss
    owner = customer.copy()
    anonymous = customer < 0
    if session is not None and anonymous.any():
        _, codes = np.unique(np.asarray(session, dtype=object)[anonymous].astype(str), return_inverse=True)
        owner[anonymous] = -1 - codes.astype(np.int64)
    pair = owner * (int(item_idx.max(initial=0)) + 2) + (item_idx + 1)
    matched = np.isin(pair, pair[dismiss])
    if session is None:  # anonymous events without sessions have no owner to pair them by
        matched &= ~anonymous
    return matched | dismiss


def log_from_arrays(
    *,
    customer: npt.ArrayLike,
    item: npt.ArrayLike,
    type_: npt.ArrayLike,
    value: npt.ArrayLike,
    ts: npt.ArrayLike,
    session: Sequence[str] | npt.NDArray[np.object_] | None,
    items: ItemTable,
    user_ids: npt.ArrayLike | None = None,
) -> InteractionLog:
    """Build a log from raw columns keyed by primary keys (customer -1 or NaN-free negative = anonymous).

    Events on items missing from ``items`` are dropped. Users are the distinct customers seen (or ``user_ids``
    when given, to share a user map across logs). Baskets: one per (customer, session); events without a session
    fall back to (customer, UTC day), so a shop that sends no session still gets "bought the same day".
    """
    customer = np.asarray(customer, dtype=np.int64)
    item_idx = items.index_of(item)
    keep = (item_idx >= 0) & ~dismissed_pairs(customer, item_idx, np.asarray(type_), session)
    customer, item_idx = customer[keep], item_idx[keep]
    type_arr = np.asarray(type_, dtype=np.int8)[keep]
    value_arr = np.asarray(value, dtype=np.float32)[keep]
    ts_arr = np.asarray(ts, dtype=np.float64)[keep]
    if user_ids is None:
        user_ids_arr = np.unique(customer[customer >= 0])
    else:
        user_ids_arr = np.asarray(user_ids, dtype=np.int64)
    user_idx = np.where(customer >= 0, index_of(user_ids_arr, customer), -1)
    if session is None:
        session_arr: npt.NDArray[np.object_] = np.full(customer.size, "", dtype=object)
    else:
        session_arr = np.asarray(session, dtype=object)[keep]
    basket = _basket_codes(customer, session_arr, ts_arr)
    return InteractionLog(
        user=user_idx.astype(np.int32),
        item=item_idx.astype(np.int32),
        type=type_arr,
        value=value_arr,
        ts=ts_arr,
        basket=basket,
        user_ids=user_ids_arr,
        n_items=items.n_items,
    )


def _basket_codes(
    customer: npt.NDArray[np.int64], session: npt.NDArray[np.object_], ts: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    if customer.size == 0:
        return np.zeros(0, dtype=np.int64)
    has_session = session != ""
    session_code = np.full(customer.size, -1, dtype=np.int64)
    if has_session.any():
        _, codes = np.unique(session[has_session].astype(str), return_inverse=True)
        session_code[has_session] = codes
    day = np.floor(ts / SECONDS_PER_DAY).astype(np.int64)
    # (customer, session) for sessions; (customer, day) otherwise, in disjoint code ranges (flag column).
    keys = np.stack([has_session.astype(np.int64), customer, np.where(has_session, session_code, day)], axis=1)
    _, basket = np.unique(keys, axis=0, return_inverse=True)
    basket = basket.astype(np.int64).ravel()
    # An anonymous event without a session cannot exist (a check constraint), but never pool anonymous days.
    basket[(customer < 0) & ~has_session] = -1
    return basket


@dataclass(frozen=True)
class Weighting:
    """How events become user-item weights; shared by training, evaluation and (through meta.json) serving."""

    type_weights: Mapping[int, float]
    rating_base: float
    rating_per_point: float
    half_life_days: float | None
    aggregate: str  # "max" or "sum" over a (user, item)'s events

    def event_weights(
        self, log: InteractionLog, reference_ts: float, half_life_days: float | None = None
    ) -> npt.NDArray[np.float32]:
        """Per event: type weight times the recency decay at ``reference_ts``."""
        base = event_weights(
            log.type, log.value, self.type_weights, rating_base=self.rating_base, rating_per_point=self.rating_per_point
        )
        half_life = self.half_life_days if half_life_days is None else half_life_days
        return base * decay((reference_ts - log.ts) / SECONDS_PER_DAY, half_life)


def user_item_matrix(
    log: InteractionLog,
    weighting: Weighting,
    *,
    reference_ts: float,
    half_life_days: float | None = None,
    n_users: int | None = None,
) -> sp.csr_matrix:
    """``(n_users, n_items)`` float32 CSR of aggregated, decayed weights; anonymous events are left out.

    ``half_life_days`` overrides the weighting's own (the scoring-time history decay differs from training's).
    """
    weights = weighting.event_weights(log, reference_ts, half_life_days)
    known = (log.user >= 0) & (weights > 0)
    rows = log.user[known].astype(np.int64)
    cols = log.item[known].astype(np.int64)
    w = weights[known].astype(np.float64)
    shape = (log.n_users if n_users is None else n_users, log.n_items)
    if weighting.aggregate == "sum":
        matrix = sp.csr_matrix((w, (rows, cols)), shape=shape)
    elif weighting.aggregate == "max":
        key = rows * shape[1] + cols
        unique, inverse = np.unique(key, return_inverse=True)
        best = np.zeros(unique.size, dtype=np.float64)
        np.maximum.at(best, inverse, w)
        matrix = sp.csr_matrix((best, (unique // shape[1], unique % shape[1])), shape=shape)
    else:
        raise ValueError(f"unknown aggregate {weighting.aggregate!r} (use 'max' or 'sum')")
    matrix.sum_duplicates()
    return matrix.astype(np.float32)


def basket_matrix(log: InteractionLog, *, types: Sequence[int] = (PURCHASE,), max_basket: int) -> sp.csr_matrix:
    """Binary ``(n_baskets, n_items)`` CSR of the baskets with 2..max_basket distinct items of ``types``.

    Very large baskets (wholesale orders, bulk imports) pair everything with everything: they cost quadratic
    time and say little about what goes together, so they are left out.
    """
    chosen = np.isin(log.type, np.asarray(types, dtype=np.int8)) & (log.basket >= 0)
    basket, item = log.basket[chosen], log.item[chosen].astype(np.int64)
    if basket.size == 0:
        return sp.csr_matrix((0, log.n_items), dtype=np.float32)
    codes, basket = np.unique(basket, return_inverse=True)
    m = sp.csr_matrix((np.ones(basket.size, np.float32), (basket, item)), shape=(codes.size, log.n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    sizes = np.diff(m.indptr)
    return m[(sizes >= 2) & (sizes <= max_basket)]


def item_text(title: str, description: str, category: str, brand: str, tags: str) -> str:
    """The text the content vectors read; a description equal to the title (common in imports) is not doubled."""
    parts = [title]
    if description and description.strip().lower() != title.strip().lower():
        parts.append(description)
    parts += [category, brand, tags]
    return " ".join(part for part in parts if part)
