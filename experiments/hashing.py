"""Deterministic A/B variant assignment, bit-for-bit compatible with the GrowthBook SDKs."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "bucket",
    "bucket_ranges",
    "choose_variant",
    "fnv1a32",
    "hash_v1",
    "in_namespace",
]

_FNV32_OFFSET_BASIS = 0x811C9DC5
_FNV32_PRIME = 0x01000193
_UINT32_MASK = 0xFFFFFFFF

# GrowthBook (sdk-js getBucketRanges, python core.getBucketRanges) silently replaces weights whose
# total is outside this band with equal weights; we keep the same band so assignments agree.
_WEIGHT_SUM_LOW = 0.99
_WEIGHT_SUM_HIGH = 1.01


def fnv1a32(data: str) -> int:
    """FNV-1a 32-bit hash of ``data``, iterated over its UTF-16 code units.

    GrowthBook's reference JS SDK feeds ``str.charCodeAt(i)`` (UTF-16 code units) into FNV-1a, and
    the Python SDK (growthbook>=4, ``core.fnv1a32``) does the same, so for any non-ASCII id this
    differs from hashing the UTF-8 bytes. For ASCII both coincide, which is why only the ASCII path
    is taken byte-wise.
    """
    hval = _FNV32_OFFSET_BASIS
    if data.isascii():
        # One byte per character equals one UTF-16 code unit; iterating bytes is ~2x faster.
        for unit in data.encode("ascii"):
            hval = ((hval ^ unit) * _FNV32_PRIME) & _UINT32_MASK
        return hval
    # surrogatepass keeps lone surrogates hashable, as they are for JS's charCodeAt.
    raw = data.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(raw), 2):
        unit = raw[i] | (raw[i + 1] << 8)
        hval = ((hval ^ unit) * _FNV32_PRIME) & _UINT32_MASK
    return hval


def bucket(seed: str, unit_id: str) -> float:
    """GrowthBook hash version 2: a value in [0, 1) with 4 decimal places.

    ``fnv1a32(str(fnv1a32(seed + unit_id))) % 10000 / 10000``. The double hash removes the
    correlation between experiments sharing a seed prefix that version 1 suffers from.
    """
    n = fnv1a32(str(fnv1a32(seed + unit_id)))
    return (n % 10000) / 10000


def hash_v1(seed: str, unit_id: str) -> float:
    """GrowthBook hash version 1 (legacy, biased): ``fnv1a32(unit_id + seed) % 1000 / 1000``.

    Only for reproducing assignments of experiments created with ``hashVersion: 1``.
    """
    return (fnv1a32(unit_id + seed) % 1000) / 1000


def bucket_ranges(weights: Sequence[float], coverage: float = 1.0) -> list[tuple[float, float]]:
    """GrowthBook ``getBucketRanges``: one half-open ``[start, end)`` range per variant.

    Ranges start at the cumulative weight of the preceding variants and span ``coverage * weight``,
    so lowering coverage shrinks every range in place instead of reshuffling users. As in the SDK,
    coverage is clamped to [0, 1] and weights whose sum is outside [0.99, 1.01] fall back to equal
    weights. Unlike the SDK (which accepts anything), empty, negative or non-finite weights and a
    NaN coverage raise ``ValueError``: they are configuration bugs, not something to paper over.
    """
    if len(weights) == 0:
        raise ValueError("weights must contain at least one variant")
    ws = [float(w) for w in weights]
    if any(not math.isfinite(w) or w < 0 for w in ws):
        raise ValueError(f"weights must be finite and non-negative, got {list(weights)!r}")
    cov = float(coverage)
    if math.isnan(cov):
        raise ValueError("coverage must be a number, got NaN")
    cov = min(max(cov, 0.0), 1.0)

    total = sum(ws)
    if total < _WEIGHT_SUM_LOW or total > _WEIGHT_SUM_HIGH:
        ws = [1 / len(ws)] * len(ws)

    ranges: list[tuple[float, float]] = []
    cumulative = 0.0
    for w in ws:
        start = cumulative
        cumulative += w
        ranges.append((start, start + cov * w))
    return ranges


def choose_variant(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """GrowthBook ``chooseVariation``: index of the first range with ``start <= n < end``, else -1.

    -1 means the unit falls in the uncovered part of the hash space and is not in the experiment.
    """
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def in_namespace(unit_id: str, namespace: tuple[str, float, float]) -> bool:
    """GrowthBook ``inNamespace``: is ``unit_id`` in the range ``[start, end)`` of namespace ``id``?

    ``hash("__" + id, unit_id, version 1)``, i.e. ``fnv1a32(unit_id + "__" + id) % 1000 / 1000``. The hash depends on
    the namespace only, never on an experiment, so experiments given disjoint ranges of one namespace never share a
    unit, while each still splits its own units by its own seed (``bucket``).
    """
    namespace_id, start, end = namespace
    n = hash_v1("__" + namespace_id, unit_id)
    return start <= n < end
