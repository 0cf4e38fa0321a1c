"""experiments.config: VariantConfig validation, overrides and merging (pure, no database)."""

from __future__ import annotations

import pytest

from experiments.config import InvalidConfig, VariantConfig, merged
from experiments.validation import VariantSpec, guardrail_errors, variant_set_errors


def test_from_dict_fills_defaults_and_keeps_given_values() -> None:
    config = VariantConfig.from_dict({"diversity_cap": 0.5, "model_version": 12, "blend_weights": {"als": 2}})

    assert config == VariantConfig(diversity_cap=0.5, model_version=12, blend_weights={"als": 2.0})
    assert config.ranker is True
    assert config.exploration_share == 0.0


def test_from_dict_reports_every_invalid_setting_at_once() -> None:
    with pytest.raises(InvalidConfig) as excinfo:
        VariantConfig.from_dict(
            {"diversity_cap": 1.5, "ranker": "yes", "max_per_brand": 0, "colour": "red", "blend_weights": {"als": -1}}
        )

    errors = excinfo.value.errors
    assert set(errors) == {"diversity_cap", "ranker", "max_per_brand", "colour", "blend_weights"}
    assert "between 0 and 1" in errors["diversity_cap"]
    assert "true or false" in errors["ranker"]
    assert "unknown setting" in errors["colour"]


@pytest.mark.parametrize(
    "bad",
    [
        {"exploration_share": True},
        {"model_version": 1.5},
        {"model_version": True},
        {"diversity_cap": float("nan")},
        {"diversity_cap": 0},  # the re-ranker needs room for one item per category
        {"max_per_brand": 2**63},  # overflowed the compiled re-ranker: every list of the surface a 500
        {"blend_weights": {"als": 1e200, "ease": 1e200}},  # summed scores beyond a float
        {"diversity_cap": 10**400},  # beyond any float: OverflowError was a 500 in the admin
        {"blend_weights": {"als": 10**400}},
    ],
)
def test_from_dict_rejects_wrong_types(bad: dict) -> None:
    with pytest.raises(InvalidConfig):
        VariantConfig.from_dict(bad)


def test_merged_applies_only_the_override() -> None:
    default = VariantConfig(diversity_cap=0.4, rules_enabled=False)

    config = merged(default, {"exploration_share": 0.1})

    assert config == VariantConfig(diversity_cap=0.4, rules_enabled=False, exploration_share=0.1)
    assert merged(default, {}) is default
    with pytest.raises(InvalidConfig):
        merged(default, {"exploration_share": 2})


def test_to_dict_round_trips_and_is_a_copy() -> None:
    config = VariantConfig(blend_weights={"ann": 1.0})
    data = config.to_dict()
    data["blend_weights"]["ann"] = 9.0

    assert VariantConfig.from_dict(config.to_dict()) == config
    assert config.blend_weights == {"ann": 1.0}


def test_variant_set_rules() -> None:
    ok = [VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"diversity_cap": 0.2})]
    assert variant_set_errors(ok) == []

    errors = variant_set_errors(
        [VariantSpec("a", 0.6, True), VariantSpec("a", 0.6, True, {"ranker": 1})]
    )  # fmt: skip
    text = " ".join(errors)
    assert "unique" in text
    assert "one variant must be the control" in text
    assert "sum to 1" in text
    assert "Configuration of a" in text
    assert variant_set_errors([VariantSpec("only", 1.0, True)])  # a single variant is not an experiment
    # The control changes nothing (the README's rule; the form accepted {"diversity_cap": 0.5} until 5 December).
    changed = variant_set_errors([VariantSpec("control", 0.5, True, {"diversity_cap": 0.5}), VariantSpec("b", 0.5)])
    assert changed == [
        "The control ('control') serves the surface's current default, so its config must be {}; put diversity_cap in "
        "a challenger."
    ]


def test_guardrail_rules() -> None:
    assert guardrail_errors({"coverage": 0.5, "latency_p95_ms": 50}) == []
    assert guardrail_errors({"coverage": 1.5})
    assert guardrail_errors({"speed": 1})
    assert guardrail_errors({"coverage": "high"})
    assert guardrail_errors([1, 2])


def test_the_blend_sources_a_config_names_are_the_retrieval_sources() -> None:
    from experiments.config import BLEND_ALIASES, BLEND_SOURCES
    from ranking.pipeline.state import SOURCE_ALIASES
    from ranking.retrieval import SOURCES

    assert BLEND_SOURCES == SOURCES
    assert BLEND_ALIASES == SOURCE_ALIASES


def test_a_config_being_entered_names_only_sources_the_blend_weighs() -> None:
    """{"nonsense": 1} and training's {"als": 2} weighed nothing, silently (an eighth tester, 6 December). Entered
    now, they are refused, naming the sources; stored, a config is read as it always was."""
    from experiments.validation import config_error

    assert config_error({"blend_weights": {"ann": 2, "ease": 1}}) is None
    message = config_error({"blend_weights": {"als": 2, "nonsense": 1}})
    assert message is not None
    assert "unknown source 'als' (say 'ann'), 'nonsense'" in message
    assert VariantConfig.from_dict({"blend_weights": {"als": 2}}).blend_weights == {"als": 2.0}
