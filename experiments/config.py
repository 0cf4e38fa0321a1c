"""The serving configuration a variant (or a surface's default) hands to ranking: a frozen, validated dataclass.

Pure: no ORM, no Redis, no settings. Variants store *overrides* (only the settings they change) as JSON; the
effective configuration is ``merged(surface default, override)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["InvalidConfig", "VariantConfig", "finite_number", "merged"]


class InvalidConfig(ValueError):
    """One or more settings are invalid; ``errors`` maps each offending setting to a readable message."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{name}: {message}" for name, message in self.errors.items()))


@dataclass(frozen=True)
class VariantConfig:
    """How ranking serves one request. The defaults are the platform's behaviour without any configuration."""

    # The ranking model version to serve; None serves the active one.
    model_version: int | None = None
    # Apply the LambdaMART ranker; False serves the blended retrieval score.
    ranker: bool = True
    # Largest share of a list one category may take (above 0, at most 1).
    diversity_cap: float = 0.3
    # Most items of one brand in a list; None for no limit.
    max_per_brand: int | None = None
    # How the caps are enforced: "greedy" (best first that fits), "mmr" (Maximal Marginal Relevance under the same
    # caps, trading score for novelty by ``mmr_lambda``) or "off" (score order, no category or brand caps).
    diversity: str = "greedy"
    # MMR only: 1.0 is pure relevance, 0.0 pure novelty.
    mmr_lambda: float = 0.7
    # Share of slots given to exploration (under-exposed candidates), 0..1; 0 turns exploration off.
    exploration_share: float = 0.0
    # How exploration picks its items: "thompson" (a Beta posterior draw per candidate from its views and clicks)
    # or "epsilon_greedy" (uniformly at random among the under-exposed candidates).
    exploration: str = "thompson"
    # Leave out items the customer already bought.
    exclude_purchased: bool = True
    # Leave out items the customer already rated (a rating says they have had it).
    exclude_rated: bool = True
    # Retrieval source -> weight in the blended score; None keeps ranking's own weights.
    blend_weights: dict[str, float] | None = None
    # Apply the merchandiser's business rules (boosts, pins, exclusions).
    rules_enabled: bool = True

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> VariantConfig:
        """Validate ``data`` (any subset of the settings; the rest take their defaults) and build the config.

        Raises :class:`InvalidConfig` naming every invalid or unknown setting, so a form can show them all at once.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidConfig({"config": f"must be a JSON object of settings, got {type(data).__name__}"})
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        known = cls.field_names()
        for name, raw in data.items():
            if name not in known:
                errors[str(name)] = f"unknown setting (known: {', '.join(known)})"
                continue
            try:
                values[name] = _VALIDATORS[name](raw)
            except ValueError as exc:
                errors[name] = str(exc)
        if errors:
            raise InvalidConfig(errors)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain JSON-ready values (a copy: mutating it leaves the config untouched)."""
        out = dataclasses.asdict(self)
        if out["blend_weights"] is not None:
            out["blend_weights"] = dict(out["blend_weights"])
        return out


def merged(default: VariantConfig, override: Mapping[str, Any] | None) -> VariantConfig:
    """``default`` with the settings of ``override`` replaced; ``override`` is validated like ``from_dict``."""
    if not override:
        return default
    return VariantConfig.from_dict({**default.to_dict(), **override})


# --- validators: each returns the clean value or raises ValueError with a message a merchandiser understands ---


def _is_number(value: object) -> bool:
    # bool is an int subclass, but ``true`` as a share is always a typo.
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(value: object) -> bool:
    """A finite number (an integer too large for a float is not: it raised OverflowError, a 500 in the admin)."""
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError):
        return False


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


# Bounds serving can hold: a list has at most 100 items (a larger brand cap is no cap, and 2**63 overflowed the
# compiled re-ranker), a model version is a database id, and blend weights are finite after summing.
_INT_MAX = 2**31 - 1
_WEIGHT_MAX = 1e6


def _optional_positive_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT_MAX:
        raise ValueError(f"must be a whole number from 1 to {_INT_MAX}, or null, got {value!r}")
    return value


def _share(value: object) -> float:
    if not _is_number(value) or not finite_number(value) or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"must be a number between 0 and 1, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _cap(value: object) -> float:
    # The re-ranker needs room for at least one item per category: a cap of 0 would leave no slot for anything.
    if not _is_number(value) or not finite_number(value) or not 0.0 < float(value) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"must be a number between 0 and 1, above 0 (a cap of 0 leaves no slot), got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _choice(*allowed: str) -> Any:
    def validate(value: object) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return str(value)

    return validate


# The retrieval sources a blend weighs (ranking.retrieval.SOURCES; a test keeps the two equal: ranking imports this
# module, not the other way round). A stored config is read as it is (a name outside these weighs nothing, as it
# always did); a config being entered may name only these (:func:`blend_source_errors`).
BLEND_SOURCES: tuple[str, ...] = ("ann", "item_knn", "ease", "content", "fbt", "trending", "popular", "new")
# Training's names for three of them (ranking.pipeline.state.SOURCE_ALIASES), named in the error for one.
BLEND_ALIASES: dict[str, str] = {"als": "ann", "popularity": "popular", "knn": "item_knn"}


def blend_source_errors(config: Mapping[str, Any]) -> str | None:
    """Why the ``blend_weights`` of a config being entered name something the blend does not weigh (a typo, or
    training's "als", weighed nothing, silently: an eighth tester, 6 December), else None."""
    weights = config.get("blend_weights")
    if not isinstance(weights, Mapping):
        return None
    unknown = [name for name in weights if name not in BLEND_SOURCES]
    if not unknown:
        return None
    hints = [f"{name!r} (say {BLEND_ALIASES[name]!r})" if name in BLEND_ALIASES else repr(name) for name in unknown]
    return f"blend_weights: unknown source {', '.join(hints)}; the sources are {', '.join(BLEND_SOURCES)}."


def _blend_weights(value: object) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"must be a non-empty object of source name -> weight, or null, got {value!r}")
    clean: dict[str, float] = {}
    for source, weight in value.items():
        if not isinstance(source, str) or not source:
            raise ValueError(f"source names must be non-empty strings, got {source!r}")
        if not _is_number(weight) or not finite_number(weight) or not 0 <= float(weight) <= _WEIGHT_MAX:
            raise ValueError(f"the weight of {source!r} must be a number from 0 to {_WEIGHT_MAX:g}, got {weight!r}")
        clean[source] = float(weight)
    return clean


_VALIDATORS: dict[str, Any] = {
    "model_version": _optional_positive_int,
    "ranker": _bool,
    "diversity_cap": _cap,
    "max_per_brand": _optional_positive_int,
    "diversity": _choice("greedy", "mmr", "off"),
    "mmr_lambda": _share,
    "exploration_share": _share,
    "exploration": _choice("thompson", "epsilon_greedy"),
    "exclude_purchased": _bool,
    "exclude_rated": _bool,
    "blend_weights": _blend_weights,
    "rules_enabled": _bool,
}
assert set(_VALIDATORS) == set(VariantConfig.field_names()), "every VariantConfig field needs a validator"
