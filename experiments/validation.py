"""Validation rules shared by the services, the admin forms and the API: one wording for every entry point.

Pure: plain values in, a list of readable error messages out (empty when valid).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from experiments.config import InvalidConfig, VariantConfig, blend_source_errors, merged
from experiments.results import GUARDRAILS

# The minimum detectable effect a merchandiser may enter (a relative lift: 0.001 = 0.1%, 10 = +1,000%): smaller
# sizes no experiment that could ever finish, larger no change a list can make.
MDE_MIN, MDE_MAX = 0.001, 10.0

# Same as experiments.models.WEIGHT_SUM_TOLERANCE and the database trigger (kept here so this module stays pure).
WEIGHT_SUM_TOLERANCE = 1e-6
# The least traffic share a variant may get, unless 0 (an arm kept without traffic): 1%. An arm of 5e-324 (an eleventh
# tester, 6 December) would run, be counted and compared on next to no units, a result nobody can read. A bandit's
# arms keep 5% (experiments.bandit.MIN_SHARE). The database holds the same bound (variant_weight_minimum).
MIN_WEIGHT = 0.01


@dataclass(frozen=True)
class VariantSpec:
    """A variant as entered: name, traffic weight, control flag and the settings it overrides."""

    name: str
    weight: float
    is_control: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)


def variant_set_errors(variants: Sequence[VariantSpec]) -> list[str]:
    """At least two variants, unique names, exactly one control (changing nothing: its config ``{}``), weights of 0
    or from :data:`MIN_WEIGHT` to 1 summing to 1, valid configs."""
    errors: list[str] = []
    if len(variants) < 2:
        errors.append(f"An experiment needs at least two variants (a control and a challenger), got {len(variants)}.")
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        errors.append(f"Variant names must be unique; repeated: {', '.join(duplicates)}.")
    controls = [v.name for v in variants if v.is_control]
    if len(controls) != 1:
        errors.append(f"Exactly one variant must be the control, got {len(controls)}.")
    for v in variants:
        if v.is_control and v.config:
            errors.append(
                f"The control ({v.name!r}) serves the surface's current default, so its config must be {{}}; put "
                f"{', '.join(sorted(map(str, v.config)))} in a challenger."
            )
    for v in variants:
        message = weight_error(v.weight)
        if message:
            errors.append(f"The weight of {v.name} {message}")
    total = math.fsum(v.weight for v in variants)
    if variants and abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        errors.append(f"The weights must sum to 1 (100% of the experiment's traffic), they sum to {total:.6g}.")
    for v in variants:
        message = config_error(v.config)
        if message:
            errors.append(f"Configuration of {v.name}: {message}")
    return errors


def weight_error(weight: float) -> str | None:
    """None when ``weight`` is a variant's valid traffic share (0, or from :data:`MIN_WEIGHT` to 1), else the
    message (completing "The weight ...")."""
    if not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        return f"must be between 0 and 1, got {weight}."
    if 0.0 < weight < MIN_WEIGHT:
        return f"must be 0 or at least {MIN_WEIGHT} ({MIN_WEIGHT:.0%} of the experiment's traffic), got {weight:g}."
    return None


def config_error(config: object) -> str | None:
    """None when ``config`` is a valid set of overrides, else the message."""
    if not isinstance(config, Mapping):
        return f"must be a JSON object of settings, got {type(config).__name__}."
    try:
        merged(VariantConfig(), config)
    except InvalidConfig as exc:
        return str(exc)
    return blend_source_errors(config)


# A namespace id, a surface: what experiments.SurfaceDefault.surface and Experiment.surface hold.
SLUG = re.compile(r"^[-a-zA-Z0-9_]{1,50}$")


def namespace_errors(namespace: object) -> list[str]:
    """None, or GrowthBook's ``[id, start, end]``: a slug id and a non-empty range with 0 <= start < end <= 1."""
    if namespace is None:
        return []
    if not isinstance(namespace, Sequence) or isinstance(namespace, str) or len(namespace) != 3:
        return [f'A namespace is [id, start, end], e.g. ["home", 0, 0.5], got {namespace!r}.']
    namespace_id, start, end = namespace
    errors = []
    if not isinstance(namespace_id, str) or not SLUG.match(namespace_id):
        errors.append(f"The namespace id must be a slug of 1 to 50 letters, digits, - or _, got {namespace_id!r}.")
    numbers = [v for v in (start, end) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if len(numbers) != 2 or not 0.0 <= start < end <= 1.0:
        errors.append(f"The namespace range needs 0 <= start < end <= 1, got [{start!r}, {end!r}).")
    return errors


def namespaces_overlap(a: tuple[str, float, float] | None, b: tuple[str, float, float] | None) -> bool:
    """Could a unit be in both experiments? Always, unless both are in one namespace with disjoint ranges."""
    if a is None or b is None or a[0] != b[0]:
        return True
    return a[1] < b[2] and b[1] < a[2]


def effect_errors(minimum_detectable_effect: object) -> list[str]:
    value = minimum_detectable_effect
    if isinstance(value, bool) or not isinstance(value, int | float) or not MDE_MIN <= value <= MDE_MAX:
        return [
            f"The minimum detectable effect must be a relative lift between {MDE_MIN} and {MDE_MAX:g}, got {value!r}."
        ]
    return []


def guardrail_errors(guardrails: object) -> list[str]:
    if not isinstance(guardrails, Mapping):
        return [f'Guardrails must be a JSON object such as {{"coverage": 0.5}}, got {type(guardrails).__name__}.']
    errors: list[str] = []
    for name, threshold in guardrails.items():
        if name not in GUARDRAILS:
            errors.append(f"Unknown guardrail {name!r}; known: {', '.join(GUARDRAILS)}.")
        elif isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            errors.append(f"The threshold of guardrail {name} must be a number, got {threshold!r}.")
        elif threshold < 0 or (name == "coverage" and threshold > 1):
            errors.append(f"The threshold of guardrail {name} is out of range: {threshold!r}.")
    return errors
