"""events.features, the pure core: interest weights, forward decay, and the fold of hourly counters checked
against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from events import features
from events.models import Interaction


def test_type_codes_match_the_model() -> None:
    assert (
        features.VIEW, features.CLICK, features.ADD_TO_CART, features.PURCHASE, features.RATING, features.DISMISS
    ) == tuple(Interaction.Type.values)  # fmt: skip
    assert features.COUNTED_NAMES == tuple(Interaction.Type(t).label for t in features.COUNTED_TYPES)


def test_interest_weights() -> None:
    assert [features.interest_weight(t, None) for t in features.COUNTED_TYPES] == [1.0, 2.0, 4.0, 8.0]
    assert features.interest_weight(features.RATING, 4.5) == 4.5


def test_forward_decay_halves_per_half_life_whatever_the_landmark() -> None:
    t0 = 1_800_000_000.0
    stored = features.forward_decayed(8.0, t0)
    assert stored * features.decay_to(t0) == pytest.approx(8.0)
    assert stored * features.decay_to(t0 + features.AFFINITY_HALF_LIFE_SECONDS) == pytest.approx(4.0)
    # Two events combine by addition, the whole point of storing landmark units.
    later = features.forward_decayed(1.0, t0 + features.AFFINITY_HALF_LIFE_SECONDS)
    assert (stored + later) * features.decay_to(t0 + features.AFFINITY_HALF_LIFE_SECONDS) == pytest.approx(5.0)


def test_fold_counters_by_hand() -> None:
    # Cells: (item, count, type index (0 view, 1 click, 2 add_to_cart, 3 purchase), age in hours)
    cells = [
        (7, 10, 0, 0),  # item 7: 10 views now
        (7, 2, 1, 23),  # 2 clicks 23 h ago (still in the 24 h window)
        (7, 1, 3, 24),  # 1 purchase 24 h ago: 7 days, not 24 h
        (7, 12, 0, 100),  # 12 views 100 h ago
        (7, 99, 0, 168),  # older than 7 days: ignored
        (3, 1, 3, 5),  # item 3: one purchase
    ]
    item, count, type_index, age = (np.array(column) for column in zip(*cells, strict=True))
    folded = features.fold_counters(item_pk=item, count=count, type_index=type_index, age_hours=age, computed_at=5.0)
    assert folded.item_pk.tolist() == [3, 7]
    assert folded.views_24h.tolist() == [0, 10]
    assert folded.clicks_24h.tolist() == [0, 2]
    assert folded.add_to_carts_24h.tolist() == [0, 0]
    assert folded.purchases_24h.tolist() == [1, 0]
    assert folded.purchases_7d.tolist() == [1, 1]
    # Item 7: 24 h activity 10*1 + 2*2 = 14; the six days before: 1*8 + 12*1 = 20, i.e. 20/6 a day.
    # Item 3: 8 in 24 h, nothing before.
    k = features.TREND_SMOOTHING
    assert folded.trend.tolist() == pytest.approx([(8 + k) / k, (14 + k) / (20 / 6 + k)], rel=1e-6)
    assert folded.computed_at == 5.0


def test_fold_of_nothing_and_blob_round_trip() -> None:
    empty = np.zeros(0, dtype=np.int64)
    folded = features.fold_counters(item_pk=empty, count=empty, type_index=empty, age_hours=empty, computed_at=1.0)
    assert folded.item_pk.size == 0
    assert folded.rows(np.array([1, 2])).tolist() == [-1, -1]

    item, count = np.array([5, 9, 5]), np.array([1, 2, 3])
    zeros = np.zeros(3, dtype=np.int64)
    folded = features.fold_counters(item_pk=item, count=count, type_index=zeros, age_hours=zeros, computed_at=2.0)
    loaded = features.ItemFeatures.from_bytes(folded.to_bytes())
    assert loaded.item_pk.tolist() == [5, 9]
    assert loaded.views_24h.tolist() == [4, 2]
    assert loaded.computed_at == 2.0
    assert loaded.rows(np.array([9, 6, 5, 100])).tolist() == [1, -1, 0, -1]
