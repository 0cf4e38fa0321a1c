"""Experiment results as pure data: per-variant metrics, comparisons with the control, diagnostics and series.

Pure: the aggregates arrive as plain dataclasses from ``experiments.selectors`` (computed by GROUP BY in Postgres);
this module applies ``experiments.stats`` to them and returns frozen dataclasses. No ORM, no Redis.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments import stats

__all__ = [
    "GUARDRAILS",
    "METRICS",
    "SRM_THRESHOLD",
    "Comparison",
    "CupedData",
    "DailyTotals",
    "ExperimentResults",
    "ExperimentSpec",
    "Guardrail",
    "MetricValue",
    "SeriesPoint",
    "VariantInfo",
    "VariantResult",
    "VariantTotals",
    "WeightPoint",
    "results_build",
]

# Significance level of every comparison (docs/experiments.md: two-sided, 5%).
ALPHA = 0.05

# Fabijan et al. (KDD '19) recommend a strict threshold: with many experiments checked daily, 0.05 would cry wolf.
SRM_THRESHOLD = 0.001

METRICS = ("ctr", "add_to_cart_rate", "conversion_rate", "revenue_per_customer")

# How each metric is compared with the control: every test treats the randomisation unit (customer or anonymous
# session) as the independent observation. CTR has several lists per unit, hence the delta method.
METHODS: dict[str, str] = {
    "ctr": "per customer: ratio metric (clicked lists / lists), delta method; chance to beat by normal approximation",
    "add_to_cart_rate": "per customer: two-proportion z-test; chance to beat from Beta(1, 1) posteriors",
    "conversion_rate": "per customer: two-proportion z-test; chance to beat from Beta(1, 1) posteriors",
    "revenue_per_customer": "per customer: Welch t-test",
    "revenue_per_customer_cuped": "per customer: Welch t-test on CUPED-adjusted revenue",
}

# Guardrail name -> "min" (breached below the threshold) or "max" (breached above it).
GUARDRAILS: dict[str, str] = {"coverage": "min", "latency_p95_ms": "max"}


# --- inputs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantInfo:
    id: int
    name: str
    weight: float
    is_control: bool
    model_version: int | None = None  # the version its config names (VariantConfig.model_version); None: the active


@dataclass(frozen=True)
class ExperimentSpec:
    id: int
    key: str
    name: str
    surface: str
    namespace: tuple[str, float, float] | None
    status: str
    mode: str
    primary_metric: str
    minimum_detectable_effect: float
    attribution_window_hours: int
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    guardrails: Mapping[str, float]
    winner: str | None
    variants: tuple[VariantInfo, ...]  # control first
    # The last change of the surface's default while the experiment ran (every arm is built on it), if any.
    surface_default_changed_at: dt.datetime | None = None


@dataclass(frozen=True)
class VariantTotals:
    """One variant's aggregates; a *unit* is a customer (or an anonymous session) with at least one impression."""

    variant_id: int
    exposures: int  # distinct units
    impressions: int
    clicks: int  # impressions with at least one click carrying their request id
    carted_units: int  # units with an attributed add-to-cart
    converted_units: int  # units with an attributed purchase
    revenue: float  # sum of attributed purchase values
    revenue_sd: float  # sample SD of revenue per unit, units without purchases counted as 0
    # CTR is a ratio metric over units: per unit i, c_i clicked lists of n_i shown. The delta method needs these.
    clicks_sq: float  # sum of c_i^2
    impressions_sq: float  # sum of n_i^2
    clicks_impressions: float  # sum of c_i * n_i

    def ctr_summary(self) -> stats.RatioSummary:
        return stats.RatioSummary(
            units=self.exposures,
            sum_y=self.clicks,
            sum_x=self.impressions,
            sum_yy=self.clicks_sq,
            sum_xx=self.impressions_sq,
            sum_xy=self.clicks_impressions,
        )


@dataclass(frozen=True)
class DailyTotals:
    """Per variant and UTC day: impressions and clicks served that day, and the units first exposed that day with
    their outcomes (so cumulative sums give the metric "as of" each day by exposure cohort)."""

    day: dt.date
    variant_id: int
    impressions: int
    clicks: int
    new_units: int
    new_carted: int
    new_converted: int
    new_revenue: float


@dataclass(frozen=True, eq=False)
class CupedData:
    """Per unit: variant, in-experiment revenue (y) and pre-experiment revenue (x, the covariate)."""

    variant_ids: np.ndarray
    y: np.ndarray
    x: np.ndarray


# --- outputs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A variant against the control on one metric; ``difference`` is variant minus control."""

    difference: float
    relative_lift: float | None
    ci_low: float  # 95% CI of the difference
    ci_high: float
    p_value: float
    p_value_holm: float  # Holm-adjusted over the variants compared with the control (= p_value with one)
    always_valid_p_value: float | None  # mSPRT, Holm-adjusted like p_value_holm; rates only
    chance_to_beat_control: float | None  # Bayesian, rates only
    method: str  # how the interval and the p-values were computed, for the page and the API
    # "better" / "worse": the interval excludes 0 *and* the Holm-adjusted p-value is below ALPHA; "" otherwise. The
    # interval alone is not adjusted: with three challengers of an A/A test one of them excluded 0 in 14% of runs.
    verdict: str = ""


@dataclass(frozen=True)
class MetricValue:
    metric: str
    numerator: float
    denominator: int
    value: float | None  # None while the denominator is 0
    vs_control: Comparison | None = None  # None for the control and while a test is not possible


@dataclass(frozen=True)
class Guardrail:
    name: str
    kind: str  # "min" or "max"
    threshold: float
    value: float | None  # None: not measured (yet)
    breached: bool


@dataclass(frozen=True)
class VariantResult:
    name: str
    is_control: bool
    weight: float
    exposures: int
    impressions: int
    clicks: int
    add_to_carts: int
    conversions: int
    revenue: float
    ctr: MetricValue
    add_to_cart_rate: MetricValue
    conversion_rate: MetricValue
    revenue_per_customer: MetricValue
    revenue_per_customer_cuped: MetricValue | None
    sample_size_required: int | None
    sample_size_progress: float | None  # this variant's sample / the required one (may exceed 1)
    guardrails: tuple[Guardrail, ...]

    def metric(self, name: str) -> MetricValue:
        if name not in METRICS:
            raise KeyError(name)
        return getattr(self, name)


@dataclass(frozen=True)
class SeriesPoint:
    day: dt.date
    variant: str
    impressions: int  # that day
    clicks: int  # that day
    exposures: int  # cumulative units up to and including the day
    primary_value: float | None  # the primary metric, cumulative by exposure cohort


@dataclass(frozen=True)
class WeightPoint:
    at: dt.datetime
    variant: str
    weight: float


@dataclass(frozen=True)
class ExperimentResults:
    key: str
    name: str
    surface: str
    namespace: tuple[str, float, float] | None  # GrowthBook's [id, start, end); None: the whole surface
    status: str
    mode: str
    primary_metric: str
    minimum_detectable_effect: float
    attribution_window_hours: int
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    winner: str | None
    variants: tuple[VariantResult, ...]
    srm_p_value: float | None
    srm_flagged: bool
    cuped_variance_reduction: float | None
    cuped_theta: float | None
    cuped_note: str | None  # why CUPED was not applied, when it was not
    series: tuple[SeriesPoint, ...]
    weight_history: tuple[WeightPoint, ...]
    warnings: tuple[str, ...]
    computed_at: dt.datetime
    guardrails_breached: bool = field(default=False)

    @property
    def control(self) -> VariantResult | None:
        return next((v for v in self.variants if v.is_control), None)

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)


# --- the builder ----------------------------------------------------------------------------------------------


def results_build(
    *,
    spec: ExperimentSpec,
    totals: Mapping[int, VariantTotals],
    daily: Sequence[DailyTotals],
    items_shown: Mapping[int, int],
    active_items: int,
    cuped: CupedData | None,
    weight_history: Sequence[WeightPoint],
    latency_p95_ms: Mapping[int, float] | None,
    computed_at: dt.datetime,
    served_versions: Mapping[int, Mapping[int | None, int]] | None = None,
) -> ExperimentResults:
    """Apply the statistics to the aggregates. ``totals`` and ``items_shown`` are keyed by variant id; variants
    without impressions simply have no entry. ``served_versions``: per variant, lists per model version that served
    them (what each impression recorded)."""
    warnings: list[str] = []
    empty = VariantTotals(0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    rows = {v.id: totals.get(v.id, empty) for v in spec.variants}
    control = next((v for v in spec.variants if v.is_control), None)
    if control is None:
        raise ValueError(f"experiment {spec.key!r} has no control variant")
    c = rows[control.id]
    treatments = [v for v in spec.variants if not v.is_control]

    comparisons = _comparisons(c, {v.id: rows[v.id] for v in treatments})
    cuped_values, cuped_theta, cuped_reduction, cuped_note = _cuped(cuped, spec, control.id)

    required = _sample_size(spec, c)
    guardrails_breached = False
    variants: list[VariantResult] = []
    for info in spec.variants:
        t = rows[info.id]
        per = comparisons.get(info.id, {})
        rails = _guardrails(
            spec.guardrails, items_shown.get(info.id, 0), active_items, latency_p95_ms, info.id, lists=t.impressions
        )
        for rail in rails:
            if rail.breached:
                guardrails_breached = True
                warnings.append(
                    f"Guardrail {rail.name} breached by {info.name}: {rail.value:.4g} "
                    f"({'below the minimum' if rail.kind == 'min' else 'above the maximum'} {rail.threshold:g})."
                )
        # Every metric is sized in units (CTR included: its lists are not independent).
        denominator = t.exposures
        variants.append(
            VariantResult(
                name=info.name,
                is_control=info.is_control,
                weight=info.weight,
                exposures=t.exposures,
                impressions=t.impressions,
                clicks=t.clicks,
                add_to_carts=t.carted_units,
                conversions=t.converted_units,
                revenue=t.revenue,
                ctr=_metric("ctr", t.clicks, t.impressions, per),
                add_to_cart_rate=_metric("add_to_cart_rate", t.carted_units, t.exposures, per),
                conversion_rate=_metric("conversion_rate", t.converted_units, t.exposures, per),
                revenue_per_customer=_metric("revenue_per_customer", t.revenue, t.exposures, per),
                revenue_per_customer_cuped=cuped_values.get(info.id),
                sample_size_required=required,
                sample_size_progress=denominator / required if required else None,
                guardrails=rails,
            )
        )

    srm_p, srm_flagged = _srm(spec, rows)
    if srm_flagged:
        warnings.insert(
            0,
            f"Sample ratio mismatch (p = {srm_p:.2g} < {SRM_THRESHOLD}): the observed split of customers does not "
            "match the configured weights, so the comparison is not trustworthy. Check assignment and logging.",
        )
    warnings.extend(_version_warnings(spec, served_versions or {}))
    if spec.surface_default_changed_at is not None:
        warnings.append(
            f"The {spec.surface} default changed on {spec.surface_default_changed_at:%Y-%m-%d %H:%M} UTC while this "
            "experiment ran (an edit, or another experiment of the surface concluded with a winner): every arm is "
            "the default plus the settings its variant names, so what the control serves, and any setting the "
            "variants do not name, changed mid-experiment and the figures mix the two periods."
        )
    if spec.mode == "bandit":
        warnings.append(
            "Bandit: traffic weights follow the results as they come in, so the fixed-horizon tests are indicative "
            "only and the sample-ratio check does not apply."
        )

    names = {v.id: v.name for v in spec.variants}
    return ExperimentResults(
        key=spec.key,
        name=spec.name,
        surface=spec.surface,
        namespace=spec.namespace,
        status=spec.status,
        mode=spec.mode,
        primary_metric=spec.primary_metric,
        minimum_detectable_effect=spec.minimum_detectable_effect,
        attribution_window_hours=spec.attribution_window_hours,
        start_at=spec.start_at,
        end_at=spec.end_at,
        winner=spec.winner,
        variants=tuple(variants),
        srm_p_value=srm_p,
        srm_flagged=srm_flagged,
        cuped_variance_reduction=cuped_reduction,
        cuped_theta=cuped_theta,
        cuped_note=cuped_note,
        series=_series(daily, names, spec.primary_metric),
        weight_history=tuple(weight_history),
        warnings=tuple(warnings),
        computed_at=computed_at,
        guardrails_breached=guardrails_breached,
    )


def _ratio(numerator: float, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _metric(name: str, numerator: float, denominator: float, comparisons: Mapping[str, Any]) -> MetricValue:
    return MetricValue(name, numerator, denominator, _ratio(numerator, denominator), comparisons.get(name))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _rate_counts(t: VariantTotals, metric: str) -> tuple[int, int]:
    """(n, conversions) of a rate metric."""
    if metric == "ctr":
        return t.impressions, t.clicks
    if metric == "add_to_cart_rate":
        return t.exposures, t.carted_units
    return t.exposures, t.converted_units


def _comparisons(control: VariantTotals, treatments: Mapping[int, VariantTotals]) -> dict[int, dict[str, Comparison]]:
    """variant id -> metric -> comparison with the control, Holm-adjusted across the variants of each metric."""
    raw: dict[str, dict[int, tuple[stats.TestResult, float | None, float | None]]] = defaultdict(dict)
    for variant_id, t in treatments.items():
        if control.exposures >= 2 and t.exposures >= 2 and control.impressions > 0 and t.impressions > 0:
            c_ctr, t_ctr = control.ctr_summary(), t.ctr_summary()
            raw["ctr"][variant_id] = (
                stats.ratio_test(c_ctr, t_ctr),
                stats.always_valid_ratio_test(c_ctr, t_ctr).p_value,
                stats.ratio_chance_to_beat_control(c_ctr, t_ctr),
            )
        for metric in ("add_to_cart_rate", "conversion_rate"):
            n_c, x_c = _rate_counts(control, metric)
            n_t, x_t = _rate_counts(t, metric)
            if n_c == 0 or n_t == 0:
                continue
            test = stats.proportion_test(n_c, x_c, n_t, x_t)
            sequential = stats.always_valid_proportion_test(n_c, x_c, n_t, x_t)
            beat = stats.chance_to_beat_control(n_c, x_c, n_t, x_t)
            raw[metric][variant_id] = (test, sequential.p_value, beat)
        if control.exposures >= 2 and t.exposures >= 2:
            test = stats.mean_test(
                control.exposures,
                control.revenue / control.exposures,
                control.revenue_sd,
                t.exposures,
                t.revenue / t.exposures,
                t.revenue_sd,
            )
            raw["revenue_per_customer"][variant_id] = (test, None, None)

    out: dict[int, dict[str, Comparison]] = defaultdict(dict)
    for metric, by_variant in raw.items():
        ids = list(by_variant)
        adjusted = stats.holm_adjust([by_variant[i][0].p_value for i in ids])
        # Always-valid p-values are valid p-values at any stopping time, so Holm controls their family-wise error
        # too: "stop when the always-valid p-value drops below 0.05" must not be one chance per challenger.
        sequential = [by_variant[i][1] for i in ids]
        adjusted_sequential: list[float | None] = (
            list(stats.holm_adjust([p for p in sequential if p is not None]))
            if all(p is not None for p in sequential)
            else list(sequential)
        )
        for variant_id, p_holm, sequential_p in zip(ids, adjusted, adjusted_sequential, strict=True):
            test, _, beat = by_variant[variant_id]
            out[variant_id][metric] = _comparison(test, p_holm, sequential_p, beat, METHODS[metric])
    return out


def _comparison(
    test: stats.TestResult, p_holm: float, sequential_p: float | None, beat: float | None, method: str
) -> Comparison:
    return Comparison(
        difference=test.difference,
        relative_lift=_finite_or_none(test.relative_lift),
        ci_low=test.ci_low,
        ci_high=test.ci_high,
        p_value=test.p_value,
        p_value_holm=p_holm,
        always_valid_p_value=sequential_p,
        chance_to_beat_control=beat,
        method=method,
        verdict=_verdict(test, p_holm),
    )


def _verdict(test: stats.TestResult, p_holm: float) -> str:
    """ "better" or "worse" only when the interval and the multiplicity-adjusted test agree that the difference is not
    0 (the z-test's pooled p-value and the Wald interval may also disagree at the edge)."""
    if not p_holm < ALPHA:
        return ""
    if test.ci_low > 0:
        return "better"
    if test.ci_high < 0:
        return "worse"
    return ""


def _cuped(
    data: CupedData | None, spec: ExperimentSpec, control_id: int
) -> tuple[dict[int, MetricValue], float | None, float | None, str | None]:
    """Revenue per customer adjusted with each customer's pre-experiment revenue (CUPED, one pooled theta)."""
    if data is None or data.y.size < 2:
        return {}, None, None, "CUPED not applied: fewer than two exposed customers."
    try:
        result = stats.cuped_adjust(data.y, data.x)
    except ValueError:
        return {}, None, None, "CUPED not applied: the exposed customers' pre-experiment purchases do not vary."
    summary: dict[int, tuple[int, float, float]] = {}
    for info in spec.variants:
        mask = data.variant_ids == info.id
        n = int(mask.sum())
        if n >= 2:
            adjusted = result.adjusted[mask]
            summary[info.id] = (n, float(adjusted.mean()), float(adjusted.std(ddof=1)))
    tests: dict[int, stats.TestResult] = {}
    if control_id in summary:
        n_c, m_c, s_c = summary[control_id]
        for variant_id, (n, m, s) in summary.items():
            if variant_id != control_id:
                tests[variant_id] = stats.mean_test(n_c, m_c, s_c, n, m, s)
    adjusted_p = dict(zip(tests, stats.holm_adjust([t.p_value for t in tests.values()]), strict=True))
    values = {
        variant_id: MetricValue(
            "revenue_per_customer_cuped",
            m * n,
            n,
            m,
            _comparison(tests[variant_id], adjusted_p[variant_id], None, None, METHODS["revenue_per_customer_cuped"])
            if variant_id in tests
            else None,
        )
        for variant_id, (n, m, _) in summary.items()
    }
    return values, result.theta, result.variance_reduction, None


def _sample_size(spec: ExperimentSpec, control: VariantTotals) -> int | None:
    """Units (customers or sessions) per variant to detect the MDE on the primary metric with 80% power at 5%.

    CTR is sized in units with the delta-method variance of the control's clicks per list (its lists are not
    independent). Revenue has no closed-form baseline here, so its experiments are sized on the conversion rate (the
    usual proxy: revenue per customer moves through conversion)."""
    if spec.primary_metric == "ctr":
        if control.exposures < 2 or control.impressions == 0:
            return None
        try:
            return stats.ratio_sample_size_per_variant(control.ctr_summary(), spec.minimum_detectable_effect)
        except ValueError:  # no clicks yet, or no variation between units
            return None
    metric = "conversion_rate" if spec.primary_metric == "revenue_per_customer" else spec.primary_metric
    n, x = _rate_counts(control, metric)
    if n == 0:
        return None
    baseline = x / n
    try:
        return stats.sample_size_per_variant(baseline, spec.minimum_detectable_effect)
    except ValueError:  # baseline 0 or 1, or the lift would leave (0, 1)
        return None


def _guardrails(
    thresholds: Mapping[str, float],
    items_shown: int,
    active_items: int,
    latency_p95_ms: Mapping[int, float] | None,
    variant_id: int,
    *,
    lists: int,
) -> tuple[Guardrail, ...]:
    out: list[Guardrail] = []
    for name, threshold in thresholds.items():
        kind = GUARDRAILS.get(name)
        if kind is None:
            continue
        value: float | None
        if name == "coverage":
            # No list served yet is not measured yet (a fresh experiment read "breached: 0"; an eighth tester); lists
            # served empty are measured: the alarm this guardrail is for.
            value = items_shown / active_items if active_items and lists else None
        else:  # latency_p95_ms: from the latency serving records with each impression
            value = (latency_p95_ms or {}).get(variant_id)
        breached = value is not None and (value < threshold if kind == "min" else value > threshold)
        out.append(Guardrail(name, kind, float(threshold), value, breached))
    return tuple(out)


def _version_warnings(spec: ExperimentSpec, served: Mapping[int, Mapping[int | None, int]]) -> list[str]:
    """What the arms were really served from. An arm naming a version that a process could not load served the
    active one instead (and counts as the arm's), and an arm without one follows every activation and roll-back:
    either way the page would compare something other than what the experiment says, without a word."""
    out: list[str] = []
    for info in spec.variants:
        by_version = {version: n for version, n in served.get(info.id, {}).items() if n > 0}
        total = sum(by_version.values())
        if not total:
            continue
        listed = ", ".join(
            f"{'none' if version is None else version} ({n / total:.0%})"
            for version, n in sorted(by_version.items(), key=lambda kv: -kv[1])
        )
        if info.model_version is not None:
            other = total - by_version.get(info.model_version, 0)
            if other:
                out.append(
                    f"{info.name} names model version {info.model_version}, but {other} of its {total} lists "
                    f"({other / total:.0%}) were served by another (versions: {listed}): the version could not be "
                    "loaded, so those lists are not the version under test."
                )
        elif len(by_version) > 1:
            out.append(
                f"{info.name} serves the active model version, which changed during the experiment (versions: "
                f"{listed}): its figures mix the versions."
            )
    return out


def _srm(spec: ExperimentSpec, rows: Mapping[int, VariantTotals]) -> tuple[float | None, bool]:
    if spec.mode != "ab":
        return None, False
    weighted = [(rows[v.id].exposures, v.weight) for v in spec.variants if v.weight > 0]
    if len(weighted) < 2 or sum(n for n, _ in weighted) == 0:
        return None, False
    p = stats.srm_p_value([n for n, _ in weighted], [w for _, w in weighted])
    return p, p < SRM_THRESHOLD


def _series(daily: Sequence[DailyTotals], names: Mapping[int, str], primary_metric: str) -> tuple[SeriesPoint, ...]:
    """Cumulative primary metric per variant and day. A loop over days x variants of already aggregated rows."""
    running: dict[int, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0.0])
    points: list[SeriesPoint] = []
    for row in sorted(daily, key=lambda r: (r.day, r.variant_id)):
        if row.variant_id not in names:
            continue
        acc = running[row.variant_id]
        acc[0] += row.impressions
        acc[1] += row.clicks
        acc[2] += row.new_units
        acc[3] += row.new_carted
        acc[4] += row.new_converted
        acc[5] += row.new_revenue
        impressions, clicks, units, carted, converted, revenue = acc
        value = {
            "ctr": _ratio(clicks, int(impressions)),
            "add_to_cart_rate": _ratio(carted, int(units)),
            "conversion_rate": _ratio(converted, int(units)),
            "revenue_per_customer": _ratio(revenue, int(units)),
        }[primary_metric]
        points.append(SeriesPoint(row.day, names[row.variant_id], row.impressions, row.clicks, int(units), value))
    return tuple(points)
