"""Whether one list-maker beats another with confidence on the same users: the paired bootstrap over users of the
difference of a per-user metric (NDCG@k). Pure numpy.

Training's choices (does the LambdaMART ranker ship; does the pipeline serve rather than its best single source)
compare two figures measured on a few hundred validation users; a difference of 0.01 there is within the noise of
which users happened to be held out. The rule: the more complex choice ships only when the lower bound of the
one-sided ``1 - alpha`` bootstrap interval of the mean per-user difference is above zero; else the simpler one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ALPHA = 0.05  # one-sided: the complex choice ships when it is better with 95% confidence
RESAMPLES = 2_000
MIN_USERS = 20  # fewer users with a defined figure than this: never confident


@dataclass(frozen=True)
class Comparison:
    """The paired comparison of ``a`` against ``b`` on the users both are defined for."""

    users: int
    mean_a: float
    mean_b: float
    lower: float  # the bootstrap lower bound of mean(a - b)
    confident: bool  # lower > 0

    @property
    def difference(self) -> float:
        return self.mean_a - self.mean_b

    def describe(self, a: str, b: str, metric: str = "NDCG@10") -> str:
        verdict = "better with confidence" if self.confident else "not better with confidence"
        return (
            f"{a} {metric} {self.mean_a:.4f} vs {b} {self.mean_b:.4f} on {self.users} users: difference "
            f"{self.difference:+.4f}, {1 - ALPHA:.0%} lower bound {self.lower:+.4f} ({verdict})"
        )

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "users": self.users,
            "mean_a": round(self.mean_a, 5),
            "mean_b": round(self.mean_b, 5),
            "difference": round(self.difference, 5),
            "lower_bound": round(self.lower, 5),
            "confident": self.confident,
        }


def paired_bootstrap(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    alpha: float = ALPHA,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Compare per-user figures ``a`` and ``b`` (aligned; NaN where undefined, e.g. no relevant item): resample the
    users with replacement ``resamples`` times (seeded) and take the ``alpha`` quantile of the mean difference."""
    a_arr, b_arr = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"per-user figures must be aligned, not {a_arr.shape} and {b_arr.shape}")
    defined = np.isfinite(a_arr) & np.isfinite(b_arr)
    a_arr, b_arr = a_arr[defined], b_arr[defined]
    n = int(a_arr.size)
    if n == 0:
        return Comparison(0, 0.0, 0.0, 0.0, False)
    diff = a_arr - b_arr
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // n)  # bounded memory: chunk * n indices at a time
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    lower = float(np.quantile(means, alpha))
    return Comparison(n, float(a_arr.mean()), float(b_arr.mean()), lower, n >= MIN_USERS and lower > 0.0)
