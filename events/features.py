"""Pure numeric core of the online state: interest weights, forward decay, and the fold of hourly item counters
into per-item features. numpy and plain values only: no ORM, Redis or settings."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

# Interaction.Type values, repeated here (and checked against the model in the tests) so this module stays pure.
VIEW, CLICK, ADD_TO_CART, PURCHASE, RATING = 1, 2, 3, 4, 5
# "Not interested": kept apart from the history (a per-owner dismissed set), never an interest.
DISMISS = 6

# The counted types, in the order of every counter array; ratings are not counted (they are rare and late).
COUNTED_TYPES: tuple[int, ...] = (VIEW, CLICK, ADD_TO_CART, PURCHASE)
COUNTED_NAMES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")

# How much an event says about interest in its category: a purchase is worth eight views.
INTEREST_WEIGHTS: dict[int, float] = {VIEW: 1.0, CLICK: 2.0, ADD_TO_CART: 4.0, PURCHASE: 8.0}
# A rating weighs its value (a 5-star rating lands between an add-to-cart and a purchase).
RATING_WEIGHT_PER_POINT = 1.0
# The documented range of a rating's value (docs/events.md). Ingestion refuses values outside it; the weight is
# clipped to it as well, so a value stored before that rule (or by other means) cannot make an affinity infinite.
RATING_MIN, RATING_MAX = 0.0, 10.0

# Forward decay (Cormode et al. 2009): scores are stored scaled up from a fixed landmark so that adding an event is
# a plain increment. With a 30-day half-life doubles overflow only ~80 years after the landmark.
AFFINITY_HALF_LIFE_SECONDS = 30 * 86_400.0
DECAY_LANDMARK = 1_735_689_600.0  # 2025-01-01T00:00:00Z

# Trend: the last 24 hours against the average day of the six before, with this many weighted events added to
# both sides so an item going from 0 to 1 view is not "trending".
TREND_SMOOTHING = 10.0
HOURS_24 = 24
HOURS_7D = 168


def interest_weight(type_: int, value: float | None) -> float:
    if type_ == RATING:
        rating = value or 0.0
        # min/max of a NaN is not a number either: an unusable value weighs nothing.
        rating = min(max(rating, RATING_MIN), RATING_MAX) if rating == rating else 0.0
        return RATING_WEIGHT_PER_POINT * rating
    return INTEREST_WEIGHTS[type_]


def forward_decayed(weight: float, ts: float) -> float:
    """``weight`` at time ``ts`` in landmark units (what is stored)."""
    return weight * 2.0 ** ((ts - DECAY_LANDMARK) / AFFINITY_HALF_LIFE_SECONDS)


def decay_to(now: float) -> float:
    """The factor turning stored landmark-unit scores into weights as of ``now``."""
    return 2.0 ** (-(now - DECAY_LANDMARK) / AFFINITY_HALF_LIFE_SECONDS)


@dataclass(frozen=True)
class ItemFeatures:
    """Per-item online features, one row per item with activity in the last seven days, sorted by ``item_pk``."""

    item_pk: np.ndarray  # int64
    views_24h: np.ndarray  # int32
    clicks_24h: np.ndarray
    add_to_carts_24h: np.ndarray
    purchases_24h: np.ndarray
    purchases_7d: np.ndarray
    trend: np.ndarray  # float32; 1.0 = as usual, 2.0 = twice the usual daily activity
    computed_at: float  # Unix time of the fold

    def rows(self, item_pks: np.ndarray) -> np.ndarray:
        """Row index of each of ``item_pks`` in these arrays, -1 for items without recent activity."""
        item_pks = np.asarray(item_pks, dtype=np.int64)
        if self.item_pk.size == 0:
            return np.full(item_pks.shape, -1, dtype=np.int64)
        idx = np.searchsorted(self.item_pk, item_pks)
        idx = np.minimum(idx, self.item_pk.size - 1)
        return np.where(self.item_pk[idx] == item_pks, idx, -1)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        # Uncompressed: the fold runs every five minutes and every web process loads it; speed beats size.
        np.savez(
            buffer, item_pk=self.item_pk, views_24h=self.views_24h, clicks_24h=self.clicks_24h,
            add_to_carts_24h=self.add_to_carts_24h, purchases_24h=self.purchases_24h,
            purchases_7d=self.purchases_7d, trend=self.trend, computed_at=np.float64(self.computed_at),
        )  # fmt: skip
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ItemFeatures:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        for array in arrays.values():
            # Shared by every thread of a web process: nobody may write into it.
            array.setflags(write=False)
        computed_at = float(arrays.pop("computed_at"))
        return cls(computed_at=computed_at, **arrays)


def fold_counters(
    *,
    item_pk: np.ndarray,
    count: np.ndarray,
    type_index: np.ndarray,
    age_hours: np.ndarray,
    computed_at: float,
) -> ItemFeatures:
    """Fold hourly counter cells into per-item features.

    Each position is one cell: ``count`` events of ``COUNTED_TYPES[type_index]`` on ``item_pk`` in the hour
    ``age_hours`` before the current one (0 = the current, partial hour). Cells older than seven days are ignored.
    """
    item_pk = np.asarray(item_pk, dtype=np.int64)
    count = np.asarray(count, dtype=np.float64)
    type_index = np.asarray(type_index, dtype=np.int64)
    age_hours = np.asarray(age_hours, dtype=np.int64)
    keep = (age_hours >= 0) & (age_hours < HOURS_7D)
    item_pk, count, type_index, age_hours = item_pk[keep], count[keep], type_index[keep], age_hours[keep]

    items, row = np.unique(item_pk, return_inverse=True)
    n = items.size
    recent = age_hours < HOURS_24
    # Per (item, type) sums over the last 24 hours and the last 7 days, in one bincount each.
    cell = row * len(COUNTED_TYPES) + type_index
    sums_24h = np.bincount(cell[recent], weights=count[recent], minlength=n * len(COUNTED_TYPES))
    sums_7d = np.bincount(cell, weights=count, minlength=n * len(COUNTED_TYPES))
    sums_24h = sums_24h.reshape(n, len(COUNTED_TYPES))
    sums_7d = sums_7d.reshape(n, len(COUNTED_TYPES))

    weights = np.array([INTEREST_WEIGHTS[t] for t in COUNTED_TYPES])
    activity_24h = sums_24h @ weights
    usual_day = (sums_7d @ weights - activity_24h) / 6.0
    trend = (activity_24h + TREND_SMOOTHING) / (usual_day + TREND_SMOOTHING)

    def column(sums: np.ndarray, type_: int) -> np.ndarray:
        return np.rint(sums[:, COUNTED_TYPES.index(type_)]).astype(np.int32)

    return ItemFeatures(
        item_pk=items,
        views_24h=column(sums_24h, VIEW),
        clicks_24h=column(sums_24h, CLICK),
        add_to_carts_24h=column(sums_24h, ADD_TO_CART),
        purchases_24h=column(sums_24h, PURCHASE),
        purchases_7d=column(sums_7d, PURCHASE),
        trend=trend.astype(np.float32),
        computed_at=computed_at,
    )
