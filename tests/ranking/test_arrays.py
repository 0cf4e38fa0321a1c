"""The small vectorised helpers serving and the offline pipeline share (``ranking.arrays``)."""

from __future__ import annotations

import numpy as np

from ranking.arrays import index_of, isin


def test_index_of_finds_each_id_and_marks_the_absent_ones() -> None:
    ids = np.array([3, 7, 20, 41], dtype=np.int64)
    # Below the first id, between two, equal to the last, past the last, and repeated.
    assert index_of(ids, [3, 5, 41, 99, 7, 7, 0]).tolist() == [0, -1, 3, -1, 1, 1, -1]
    assert index_of(ids, np.array([], dtype=np.int64)).tolist() == []
    assert index_of(np.array([], dtype=np.int64), [1, 2]).tolist() == [-1, -1]
    assert index_of(ids, [[20], [8]]).tolist() == [[2], [-1]]  # the shape of the values is kept


def test_isin_matches_numpy_on_ids_in_any_order() -> None:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 200, size=500)
    members = rng.integers(0, 200, size=60)
    assert np.array_equal(isin(values, members), np.isin(values, members))
    assert not isin(values, np.array([], dtype=np.int64)).any()
