"""Small vectorised helpers the serving stages share."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray


def isin(values: NDArray[np.integer], members: NDArray[np.integer]) -> NDArray[np.bool_]:
    """``np.isin(values, members)`` for integer ids by binary search in the sorted members.

    ``np.isin`` compares ``values`` with each member in turn when there are few of them, which costs some 75 µs
    for a few hundred candidates against the 50 items a customer bought; this costs a tenth of that at any size.
    """
    values = np.asarray(values)
    if members.size == 0 or values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    ordered = np.sort(members)
    at = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)
    return ordered[at] == values


def positions(sorted_ids: NDArray[np.integer], values: npt.ArrayLike) -> NDArray[np.int64]:
    """The position of each of ``values`` in the ascending ``sorted_ids`` (a version's item or user ids), -1 where it
    is absent: a catalog pk to a model index, which serving and the offline pipeline both need."""
    wanted = np.asarray(values, dtype=np.int64)
    if sorted_ids.size == 0:
        return np.full(wanted.shape, -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_ids, wanted), sorted_ids.size - 1)
    return np.where(sorted_ids[at] == wanted, at, -1).astype(np.int64)
