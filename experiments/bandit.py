"""Traffic shares for a Thompson-sampling bandit: P(best) per arm, floored so every arm keeps learning.

Pure: plain floats in, plain floats out. The probabilities come from ``experiments.stats.probability_best``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["floored_shares"]


# The least traffic share a bandit's arm keeps, so it goes on being measured (and can start being measured).
MIN_SHARE = 0.05


def floored_shares(probabilities: Sequence[float], min_share: float) -> list[float]:
    """Shares proportional to ``probabilities`` with every arm at least ``min_share``, summing to exactly 1.

    Water-filling, not "clip then renormalise": renormalising after clipping pushes the clipped arms below the floor
    again (``[0.98, 0.01, 0.01]`` with a 5% floor would end at 4.6%). Arms under the floor are fixed at it and the
    remaining mass is shared among the others in proportion to their probabilities, repeated until no arm is under
    the floor (at most ``len(probabilities)`` rounds).
    """
    k = len(probabilities)
    if k < 2:
        raise ValueError(f"a bandit needs at least 2 arms, got {k}")
    if not 0.0 <= min_share <= 1.0 / k:
        raise ValueError(f"min_share must be between 0 and 1/{k} for {k} arms, got {min_share}")
    probs = [float(p) for p in probabilities]
    if any(not math.isfinite(p) or p < 0 for p in probs):
        raise ValueError(f"probabilities must be finite and >= 0, got {list(probabilities)!r}")

    floored: set[int] = set()
    shares = [0.0] * k
    while True:
        free = [i for i in range(k) if i not in floored]
        remaining = 1.0 - min_share * len(floored)
        total = sum(probs[i] for i in free)
        for i in free:
            shares[i] = remaining * (probs[i] / total if total > 0 else 1.0 / len(free))
        below = [i for i in free if shares[i] < min_share]
        if not below:
            break
        for i in below:
            floored.add(i)
            shares[i] = min_share
    # Floating-point sums drift by an ulp or two; give the residue to the largest arm so the sum is exactly 1
    # (the database trigger allows 1e-6, but exact is cheaper to reason about).
    largest = max(range(k), key=shares.__getitem__)
    shares[largest] = 1.0 - sum(s for i, s in enumerate(shares) if i != largest)
    return shares
