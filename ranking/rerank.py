"""Re-ranking of scored candidates: filters, merchandising rules, diversity caps, exploration and pins.

``rerank`` runs these steps on one request's candidate set:

1. **Filter.** Drop duplicate rows (the highest-scoring row of an item is kept), unavailable
   items, items in ``RerankConfig.exclude_idx`` and items matched by a ``block`` rule. Each
   dropped row is counted once, under the first reason in that order.
2. **Boost / bury.** ``adjusted = score + score_scale * (sum of matching boost weights - sum of
   matching bury weights)``, where ``score_scale`` is the max - min spread of the surviving
   candidates' scores (1.0 if they are all equal). Weights are therefore in units of "the whole
   score range" and mean the same across models with different score scales: a boost of 1.0
   lifts the worst candidate level with the best one. Matching rules stack additively.
3. **Pins** claim their slots, regardless of the diversity caps. Pins are resolved in
   ``(position, rule_id)`` order; a pin whose slot is taken goes to the next free slot after
   it (or, in a list too short to reach it, the nearest free slot before it). A pin is skipped
   and reported in ``RerankResult.skipped_pins`` when its item is not a surviving candidate
   (callers must add pinned items to the candidate set; filters and blocks beat pins), when
   its position is ``>= count``, when the same item was already pinned, or when no slot is left.
4. **Diversity.** The other slots are filled, in order, from the adjusted-score ranking
   according to ``RerankConfig.diversity``:

   * ``"greedy"`` (default): best-first, skipping a candidate whose category already has
     ``category_cap`` items in the list or whose brand already has ``max_per_brand`` items
     (brand ``-1`` means no brand and is never capped);
   * ``"mmr"``: Maximal Marginal Relevance under the same caps, see ``_similarity_to``;
   * ``"off"``: pure adjusted-score order, no caps at all (``max_per_brand`` is ignored too).

   Pinned items count towards the caps. When no remaining candidate fits the caps (the
   candidates are too uniform) the category cap is raised just enough for the best-fitting
   candidate, and the brand cap only if no candidate fits it at all, so the list always has
   ``min(count, surviving candidates)`` items.
5. **Exploration.** ``RerankConfig.n_explore`` slots, never position 0 nor a pinned slot, are
   given to under-exposed candidates the diversity pass did not pick (see ``_explore``) at
   seeded random positions; the lowest-ranked picked items make room, the rest keep their
   order. Fewer slots are explored only when too few slots, pool items or cap room exist.
   ``RerankConfig.exploration`` chooses the items: ``"thompson"`` (default) draws, per pool
   candidate, a click-through rate from its Beta posterior ``Beta(1 + clicks, 1 + exposure -
   clicks)`` and takes the highest draws, so rarely seen items (wide posteriors) and items that
   earn clicks when shown both win slots; ``"epsilon_greedy"`` takes pool items uniformly at
   random (a fixed share ε of the slots rather than a coin per slot, so every list explores
   equally).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ranking import kernels
from ranking.arrays import isin

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

RuleKind = Literal["boost", "bury", "pin", "block"]
RuleTarget = Literal["item", "category", "brand"]
Diversity = Literal["greedy", "mmr", "off"]
Exploration = Literal["thompson", "epsilon_greedy"]

_RULE_KINDS = frozenset({"boost", "bury", "pin", "block"})
_TARGET_ROW = {"item": 0, "category": 1, "brand": 2}
_DIVERSITY_MODES = frozenset({"greedy", "mmr", "off"})
_EXPLORATION_MODES = frozenset({"thompson", "epsilon_greedy"})
# Shares like 0.29 * 100 land at 28.999999999999996 in binary; nudge before flooring.
_FLOOR_EPS = 1e-9
# The Beta(1, 1) prior of Thompson sampling: an item never shown is equally likely to have any click-through rate.
_PRIOR_CLICKS = 1.0
_PRIOR_MISSES = 1.0

__all__ = ["Candidates", "RerankConfig", "RerankResult", "Rule", "rerank"]


# A boost or bury past this many score ranges moves nothing further (1.0 already lifts the last candidate level with
# the first); 1e308 made every boosted score infinite (an eighth tester, 6 December).
MAX_RULE_WEIGHT = 100.0


@dataclass(frozen=True, slots=True, eq=False)
class Candidates:
    """Parallel 1-D arrays describing one request's candidates (one row per candidate).

    ``item_idx`` indexes the catalog arrays, ``brand == -1`` means no brand, ``available`` means
    active and in stock, ``exposure`` is how often the item was seen so far and ``clicks`` how
    many of those views were clicked (zeros when omitted; clipped to ``exposure`` when sampling).
    Inputs are converted to int64 / float64 / bool arrays; scores must be finite.
    """

    item_idx: IntArray
    score: FloatArray
    category: IntArray
    brand: IntArray
    available: BoolArray
    exposure: FloatArray
    clicks: FloatArray | None = None

    def __post_init__(self) -> None:
        if self.clicks is None:
            object.__setattr__(self, "clicks", np.zeros(np.shape(self.exposure)))
        dtypes: dict[str, type[np.generic]] = {
            "item_idx": np.int64,
            "score": np.float64,
            "category": np.int64,
            "brand": np.int64,
            "available": np.bool_,
            "exposure": np.float64,
            "clicks": np.float64,
        }
        n = np.asarray(self.item_idx).shape[0] if np.ndim(self.item_idx) == 1 else -1
        for name, dtype in dtypes.items():
            arr = np.asarray(getattr(self, name), dtype=dtype)
            if arr.ndim != 1 or arr.shape[0] != n:
                raise ValueError(f"Candidates.{name} must be 1-D with as many rows as item_idx")
            object.__setattr__(self, name, arr)
        if not np.isfinite(self.score).all():
            raise ValueError("Candidates.score must be finite")
        if np.any(self.exposure < 0) or np.any(self.clicks < 0):  # type: ignore[operator]
            raise ValueError("Candidates.exposure and clicks must be >= 0")

    def __len__(self) -> int:
        return int(self.item_idx.shape[0])


@dataclass(frozen=True, slots=True)
class Rule:
    """One merchandising rule already filtered by the caller to the request's surface and time.

    ``weight`` (>= 0) is used by boost (added) and bury (subtracted), in units of the candidate
    score spread. ``position`` (0-based) is required for pins, which must target an item.
    """

    rule_id: int
    kind: RuleKind
    target: RuleTarget
    target_value: int
    weight: float = 0.0
    position: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _RULE_KINDS:
            raise ValueError(f"rule {self.rule_id}: unknown kind {self.kind!r}")
        if self.target not in _TARGET_ROW:
            raise ValueError(f"rule {self.rule_id}: unknown target {self.target!r}")
        if self.target_value < 0:
            # -1 is the "none" marker for brand; a rule on it would hit every unbranded item.
            raise ValueError(f"rule {self.rule_id}: target_value must be >= 0")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"rule {self.rule_id}: weight must be finite and >= 0 (bury subtracts it)")
        if self.kind == "pin":
            if self.target != "item":
                raise ValueError(f"rule {self.rule_id}: pins must target an item")
            if self.position is None or self.position < 0:
                raise ValueError(f"rule {self.rule_id}: pins need a position >= 0")


@dataclass(frozen=True, slots=True, eq=False)
class RerankConfig:
    """How many items to return and the diversity / exploration settings for one request.

    The category cap is ``max(1, floor(max_category_share * count))`` items of one category;
    ``max_per_brand`` caps items of one brand (``None``: no brand cap). ``exploration_share``
    of ``count`` slots, rounded half up, are explored (0 disables exploration and the random
    generator entirely); ``exploration`` says how the explored items are drawn (module
    docstring). ``mmr_lambda`` trades relevance (1.0) against novelty (0.0) in MMR.
    """

    count: int
    max_category_share: float = 0.3
    max_per_brand: int | None = None
    exclude_idx: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    exploration_share: float = 0.0
    seed: int | None = None
    diversity: Diversity = "greedy"
    mmr_lambda: float = 0.7
    exploration: Exploration = "thompson"

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")
        if not 0.0 < self.max_category_share <= 1.0:
            raise ValueError("max_category_share must be in (0, 1]")
        if self.max_per_brand is not None and self.max_per_brand < 1:
            raise ValueError("max_per_brand must be >= 1 or None")
        if not 0.0 <= self.exploration_share <= 1.0:
            raise ValueError("exploration_share must be in [0, 1]")
        if self.diversity not in _DIVERSITY_MODES:
            raise ValueError(f"unknown diversity mode {self.diversity!r}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError("mmr_lambda must be in [0, 1]")
        if self.exploration not in _EXPLORATION_MODES:
            raise ValueError(f"unknown exploration mode {self.exploration!r}")
        object.__setattr__(self, "exclude_idx", np.asarray(self.exclude_idx, dtype=np.int64).ravel())

    @property
    def category_cap(self) -> int:
        """Most items of one category allowed in the list (before any relaxation)."""
        return max(1, math.floor(self.max_category_share * self.count + _FLOOR_EPS))

    @property
    def n_explore(self) -> int:
        """Slots to hand to exploration, before limiting to the slots that are allowed."""
        return math.floor(self.exploration_share * self.count + 0.5)


@dataclass(frozen=True, slots=True, eq=False)
class RerankResult:
    """The final list plus the debug trace.

    ``fired[i]`` lists, ascending, the ids of the boost / bury rules that matched output item
    ``i`` and of the pin that placed it. ``dropped`` counts filtered candidate rows by reason
    (``duplicate``, ``unavailable``, ``excluded``, ``blocked``).
    """

    item_idx: IntArray
    score: FloatArray
    fired: tuple[tuple[int, ...], ...]
    explored: BoolArray
    pinned: BoolArray
    dropped: dict[str, int]
    skipped_pins: tuple[int, ...]


class _Caps:
    """Running category / brand counts of the list being built, over the ranked survivors."""

    def __init__(self, category: IntArray, brand: IntArray, cat_cap: int, brand_cap: int) -> None:
        _, self.cat_code = np.unique(category, return_inverse=True)
        _, self.brand_code = np.unique(brand, return_inverse=True)
        self.branded = brand >= 0
        self.cat_counts = np.zeros(int(self.cat_code.max(initial=-1)) + 1, dtype=np.int64)
        self.brand_counts = np.zeros(int(self.brand_code.max(initial=-1)) + 1, dtype=np.int64)
        self.cat_cap = cat_cap
        self.brand_cap = brand_cap

    def add(self, j: int, delta: int = 1) -> None:
        self.cat_counts[self.cat_code[j]] += delta
        if self.branded[j]:
            self.brand_counts[self.brand_code[j]] += delta

    def add_many(self, rows: IntArray) -> None:
        np.add.at(self.cat_counts, self.cat_code[rows], 1)
        branded_rows = rows[self.branded[rows]]
        np.add.at(self.brand_counts, self.brand_code[branded_rows], 1)

    def at_cap(self, j: int) -> bool:
        """Whether survivor ``j``'s category or brand has reached its cap."""
        if self.cat_counts[self.cat_code[j]] >= self.cat_cap:
            return True
        return bool(self.branded[j]) and self.brand_counts[self.brand_code[j]] >= self.brand_cap

    def _brand_fits(self) -> BoolArray:
        return ~self.branded | (self.brand_counts[self.brand_code] < self.brand_cap)

    def fits(self) -> BoolArray:
        """Mask of survivors that could join the list without breaking a cap."""
        return (self.cat_counts[self.cat_code] < self.cat_cap) & self._brand_fits()

    def relax(self, remaining: BoolArray) -> None:
        """Raise the caps just enough that some remaining survivor fits, category cap first."""
        brand_ok = remaining & self._brand_fits()
        if not brand_ok.any():
            self.brand_cap = int(self.brand_counts[self.brand_code[remaining]].min()) + 1
            brand_ok = remaining & self._brand_fits()
        needed = int(self.cat_counts[self.cat_code[brand_ok]].min()) + 1
        self.cat_cap = max(self.cat_cap, needed)


def _similarity_to(j: int, caps: _Caps) -> FloatArray:
    """MMR similarity of survivor ``j`` to every survivor: 0.5 per shared category / brand.

    Sharing both gives 1.0, neither 0.0; unbranded items never share a brand.
    """
    same_cat = caps.cat_code == caps.cat_code[j]
    same_brand = caps.branded & caps.branded[j] & (caps.brand_code == caps.brand_code[j])
    return 0.5 * same_cat + 0.5 * same_brand


def _fill(
    n_pick: int,
    taken: BoolArray,
    adjusted: FloatArray,
    caps: _Caps,
    config: RerankConfig,
) -> list[int]:
    """Pick ``n_pick`` untaken survivors (indices into the score-sorted survivors) in list order."""
    if config.diversity == "off":
        picked = np.flatnonzero(~taken)[:n_pick]
        caps.add_many(picked)
        taken[picked] = True
        return [int(j) for j in picked]
    if config.diversity == "greedy":
        # Compiled (ranking.kernels.greedy_fill): the first untaken survivor under the caps, slot by slot.
        greedy, caps.cat_cap, caps.brand_cap = kernels.greedy_fill(
            n_pick, taken, caps.cat_code, caps.brand_code, caps.branded, caps.cat_counts, caps.brand_counts,
            caps.cat_cap, caps.brand_cap,
        )  # fmt: skip
        return greedy.tolist()

    # MMR, on min-max normalised scores so mmr_lambda means the same for every model.
    spread = float(np.ptp(adjusted)) if adjusted.size else 0.0
    relevance = (adjusted - adjusted.min()) / spread if spread > 0 else np.zeros_like(adjusted)
    max_sim = np.zeros_like(adjusted)
    for j in np.flatnonzero(taken):
        max_sim = np.maximum(max_sim, _similarity_to(int(j), caps))

    picked_list: list[int] = []
    # One iteration per list slot; each step is a vectorised scan of the candidates. The eligible set only
    # shrinks by the pick itself until a category or brand reaches its cap, so the caps are re-checked only then.
    eligible = ~taken & caps.fits()
    for _ in range(n_pick):
        if not eligible.any():
            caps.relax(~taken)
            eligible = ~taken & caps.fits()
        value = config.mmr_lambda * relevance - (1.0 - config.mmr_lambda) * max_sim
        j = int(np.argmax(np.where(eligible, value, -np.inf)))
        max_sim = np.maximum(max_sim, _similarity_to(j, caps))
        taken[j] = True
        eligible[j] = False
        caps.add(j)
        if caps.at_cap(j):
            eligible &= caps.fits()
        picked_list.append(j)
    return picked_list


def _explore(
    exploit: list[int],
    n_explore: int,
    taken: BoolArray,
    exposure: FloatArray,
    clicks: FloatArray,
    caps: _Caps,
    rng: np.random.Generator,
    method: Exploration,
) -> list[int]:
    """Swap up to ``n_explore`` of the lowest-ranked ``exploit`` items for under-exposed ones.

    The pool is the survivors nobody picked whose exposure is at most the pool's median
    exposure. Every survivor gets one key per request: a Thompson draw from its click-through
    posterior, or a uniform number for ε-greedy; the pool items with the highest keys are taken
    (without replacement). Each pick must fit the caps left by the removed exploit item; if none
    does, exploration stops early and that item stays. Mutates ``exploit`` and ``caps``; returns
    the explored survivors in pick order.
    """
    pool = ~taken
    if n_explore <= 0 or not pool.any():
        return []
    pool &= exposure <= np.median(exposure[pool])
    if method == "thompson":
        hits = np.minimum(clicks, exposure)
        draws = rng.beta(_PRIOR_CLICKS + hits, _PRIOR_MISSES + exposure - hits)
    else:
        draws = rng.random(exposure.shape[0])
    keys = np.where(pool, draws, -np.inf)

    explored: list[int] = []
    for _ in range(n_explore):
        dropped = exploit.pop()
        caps.add(dropped, -1)
        eligible = pool & caps.fits()
        if not eligible.any():
            exploit.append(dropped)
            caps.add(dropped)
            break
        j = int(np.argmax(np.where(eligible, keys, -np.inf)))
        pool[j] = False
        caps.add(j)
        explored.append(j)
    return explored


def _drop_masks(candidates: Candidates, block_match: BoolArray, exclude_idx: IntArray) -> dict[str, BoolArray]:
    """Per-row drop reason masks; each row is attributed to the first matching reason."""
    n = len(candidates)
    items = candidates.item_idx
    if n < 2 or bool((items[1:] > items[:-1]).all()):
        duplicate = np.zeros(n, dtype=bool)  # ascending and distinct, as retrieval's candidate sets are
    else:
        # Highest score first, so np.unique's first index per item is that item's best row.
        order = np.argsort(-candidates.score, kind="stable")
        _, first = np.unique(items[order], return_index=True)
        duplicate = np.ones(n, dtype=bool)
        duplicate[order[first]] = False
    reasons: dict[str, BoolArray] = {
        "duplicate": duplicate,
        "unavailable": ~candidates.available,
        "excluded": isin(items, exclude_idx),
        "blocked": np.asarray(block_match.any(axis=0), dtype=bool),
    }
    already = np.zeros(n, dtype=bool)
    for name, mask in reasons.items():
        reasons[name] = mask & ~already
        already |= mask
    return reasons


def _assign_pins(
    pins: Sequence[Rule], survivor_items: IntArray, length: int, count: int
) -> tuple[IntArray, dict[int, int], list[int]]:
    """Slot -> survivor index (-1 = free), slot -> pin rule id, and skipped pin rule ids."""
    slots = np.full(length, -1, dtype=np.int64)
    slot_rule: dict[int, int] = {}
    skipped: list[int] = []
    lookup_order = np.argsort(survivor_items)
    sorted_items = survivor_items[lookup_order]
    pinned_survivors: set[int] = set()
    positioned = [(rule.position, rule) for rule in pins if rule.position is not None]
    for position, rule in sorted(positioned, key=lambda pr: (pr[0], pr[1].rule_id)):
        pos = int(np.searchsorted(sorted_items, rule.target_value))
        present = pos < sorted_items.size and sorted_items[pos] == rule.target_value
        free = np.flatnonzero(slots < 0)
        if not present or position >= count or free.size == 0:
            skipped.append(rule.rule_id)
            continue
        j = int(lookup_order[pos])
        if j in pinned_survivors:
            skipped.append(rule.rule_id)
            continue
        at_or_after = free[free >= position]
        slot = int(at_or_after[0]) if at_or_after.size else int(free[-1])
        slots[slot] = j
        slot_rule[slot] = rule.rule_id
        pinned_survivors.add(j)
    return slots, slot_rule, skipped


def rerank(candidates: Candidates, rules: Sequence[Rule], config: RerankConfig) -> RerankResult:
    """Apply filters, rules, diversity, exploration and pins; return the final top ``count``."""
    rules = tuple(rules)
    attributes = np.stack([candidates.item_idx, candidates.category, candidates.brand])
    kinds = np.array([r.kind for r in rules], dtype=object)
    rule_ids = np.array([r.rule_id for r in rules], dtype=np.int64)
    targets = np.array([_TARGET_ROW[r.target] for r in rules], dtype=np.intp)
    values = np.array([r.target_value for r in rules], dtype=np.int64)
    # (n_rules, n_candidates): which rule matches which candidate row.
    match = attributes[targets] == values[:, None]

    drop = _drop_masks(candidates, match[kinds == "block"], config.exclude_idx)
    keep = ~np.logical_or.reduce(list(drop.values()))
    dropped = {name: int(mask.sum()) for name, mask in drop.items()}

    signed = np.array(
        [r.weight if r.kind == "boost" else -r.weight if r.kind == "bury" else 0.0 for r in rules],
        dtype=np.float64,
    )
    survivors = np.flatnonzero(keep)
    spread = float(np.ptp(candidates.score[survivors])) if survivors.size else 0.0
    score_scale = spread if spread > 0 else 1.0
    adjusted_all = candidates.score + score_scale * (signed @ match)

    # From here on survivors are addressed by their rank in adjusted-score order.
    ranked = survivors[np.argsort(-adjusted_all[survivors], kind="stable")]
    adjusted = adjusted_all[ranked]
    length = min(config.count, ranked.size)

    slots, slot_rule, skipped = _assign_pins(
        [r for r in rules if r.kind == "pin"], candidates.item_idx[ranked], length, config.count
    )
    if config.diversity == "off":
        cat_cap = brand_cap = max(config.count, 1)
    else:
        cat_cap = config.category_cap
        brand_cap = config.max_per_brand if config.max_per_brand is not None else max(config.count, 1)
    caps = _Caps(candidates.category[ranked], candidates.brand[ranked], cat_cap, brand_cap)
    taken = np.zeros(ranked.size, dtype=bool)
    pinned_slots = slots >= 0
    taken[slots[pinned_slots]] = True
    caps.add_many(slots[pinned_slots])

    free_slots = np.flatnonzero(~pinned_slots)
    exploit = _fill(free_slots.size, taken, adjusted, caps, config)

    explore_slots_allowed = free_slots[free_slots > 0]
    n_explore = min(config.n_explore, explore_slots_allowed.size)
    explored_survivors: list[int] = []
    explored_mask = np.zeros(length, dtype=bool)
    if n_explore > 0:
        rng = np.random.default_rng(config.seed)
        explored_survivors = _explore(
            exploit, n_explore, taken, candidates.exposure[ranked], candidates.clicks[ranked], caps, rng,  # type: ignore[index]
            config.exploration,
        )  # fmt: skip
        # Random slots rather than the tail, so explored items' feedback is not all bottom-of-list.
        chosen = np.sort(rng.choice(explore_slots_allowed, size=len(explored_survivors), replace=False))
        slots[chosen] = explored_survivors
        explored_mask[chosen] = True
    slots[slots < 0] = exploit

    rows = ranked[slots]
    fired: tuple[tuple[int, ...], ...]
    if rules:
        boost_bury = np.array([r.kind in ("boost", "bury") for r in rules], dtype=bool)
        fired_matrix = match[:, rows] & boost_bury[:, None]
        fired = tuple(
            tuple(sorted([*rule_ids[fired_matrix[:, i]].tolist(), *([slot_rule[i]] if i in slot_rule else [])]))
            for i in range(length)
        )
    else:  # no rule can have fired (the usual list): no per-slot numpy calls
        fired = ((),) * length
    return RerankResult(
        item_idx=candidates.item_idx[rows],
        score=adjusted[slots],
        fired=fired,
        explored=explored_mask,
        pinned=pinned_slots,
        dropped=dropped,
        skipped_pins=tuple(skipped),
    )
