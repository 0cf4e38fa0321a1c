"""Statistics for analysing A/B experiments: frequentist, Bayesian, sequential and variance-reduction methods.

Pure numeric core (stdlib, numpy, scipy only). Convention everywhere: control first, treatment second;
differences are treatment minus control; tests are two-sided; ``alpha`` defaults to 0.05.

Methods and references
----------------------
proportion_test
    Two-proportion z-test with pooled variance under H0; the CI is the unpooled Wald interval of the
    difference (Newcombe 1998, "Interval estimation for the difference between independent
    proportions: comparison of eleven methods", Stat. Med. 17:873-890, method 1).
mean_test
    Welch's unequal-variance t-test (Welch 1947, Biometrika 34:28-35) with Welch-Satterthwaite degrees
    of freedom (Satterthwaite 1946, Biometrics Bulletin 2:110-114); CI from the same t distribution.
chance_to_beat_control
    P(p_t > p_c) under independent Beta(1, 1) priors: Evan Miller's closed form (E. Miller,
    "Formulas for Bayesian A/B Testing", evanmiller.org/bayesian-ab-testing.html), summed in log space;
    1-D quadrature when the sum would exceed ``_MAX_CLOSED_FORM_TERMS`` terms.
probability_best
    P(arm i has the highest rate) under Beta(1, 1) priors by 1-D quadrature of
    pdf_i(x) * prod_{j != i} cdf_j(x) (e.g. Scott 2015, "Multi-armed bandit experiments in the online
    service economy", Appl. Stoch. Models Bus. Ind. 31:37-45, which estimates the same quantity).
sample_size_per_variant
    Fleiss' formula without continuity correction (Fleiss, Levin & Paik 2003, "Statistical Methods for
    Rates and Proportions", 3rd ed., ch. 4); the same formula as R's ``stats::power.prop.test``.
srm_p_value
    Pearson chi-square goodness-of-fit test for sample ratio mismatch (Fabijan et al. 2019,
    "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD '19).
always_valid_proportion_test
    Mixture sequential probability ratio test (mSPRT) with a normal mixing distribution (Johari,
    Koomen, Pekelis & Walsh 2017, "Peeking at A/B Tests", KDD '17; Johari, Koomen, Pekelis & Walsh 2022,
    "Always Valid Inference: Continuous Monitoring of A/B Tests", Operations Research 70(3):1806-1821;
    the basis of Optimizely's Stats Engine).
holm_adjust
    Holm-Bonferroni step-down adjusted p-values (Holm 1979, "A simple sequentially rejective multiple
    test procedure", Scand. J. Statist. 6:65-70).
cuped_adjust
    CUPED control-variate adjustment (Deng, Xu, Kohavi & Walker 2013, "Improving the Sensitivity of
    Online Controlled Experiments by Utilizing Pre-Experiment Data", WSDM '13).
ratio_test, always_valid_ratio_test, ratio_chance_to_beat_control, ratio_sample_size_per_variant
    Ratio metrics (sum(y) / sum(x) over randomisation units, e.g. clicked lists / lists shown per
    customer) by the delta method (Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric
    Analytics: A Practical Guide with Novel Ideas", KDD '18, section 3). Units, not the lists inside
    them, are independent, so the variance comes from per-unit sums.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import integrate, special
from scipy import stats as sps

__all__ = [
    "DEFAULT_TAU_SQUARED",
    "CupedResult",
    "RatioSummary",
    "TestResult",
    "always_valid_proportion_test",
    "always_valid_ratio_test",
    "chance_to_beat_control",
    "cuped_adjust",
    "holm_adjust",
    "mean_test",
    "probability_best",
    "proportion_test",
    "ratio_chance_to_beat_control",
    "ratio_sample_size_per_variant",
    "ratio_test",
    "sample_size_per_variant",
    "srm_p_value",
]

# Above this many terms Miller's sum gets slow (it is O(terms)), while the posteriors are then so
# narrow (sd < ~1e-3) that windowed quadrature is both fast and accurate.
_MAX_CLOSED_FORM_TERMS = 100_000

# Posterior tail mass ignored on each side when integrating; far below any reportable precision.
_TAIL = 1e-15

# Default mSPRT mixing variance: tau = 0.01, i.e. absolute lifts of about one percentage point, the
# typical effect size for conversion-rate tests. Johari et al. show power is best when tau^2 is of
# the order of the squared effects one hopes to detect.
DEFAULT_TAU_SQUARED = 1e-4


@dataclass(frozen=True)
class TestResult:
    """Outcome of a two-arm comparison; ``difference`` is treatment minus control."""

    # Its name starts with "Test": stop pytest from trying to collect it when tests import it.
    __test__: ClassVar[bool] = False

    difference: float
    relative_lift: float
    p_value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True, eq=False)
class CupedResult:
    """CUPED output; ``adjusted`` is read-only. eq=False because ndarray equality is elementwise."""

    theta: float
    adjusted: np.ndarray
    variance_reduction: float


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _count(name: str, value: object, minimum: int = 0) -> int:
    # bool is an Integral subclass, but True as a sample size is always a bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _finite(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _probability_open(name: str, value: object) -> float:
    v = _finite(name, value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {v}")
    return v


def _binomial_arm(label: str, n: object, conversions: object) -> tuple[int, int]:
    n_i = _count(f"n_{label}", n, minimum=1)
    c_i = _count(f"conversions_{label}", conversions)
    if c_i > n_i:
        raise ValueError(f"conversions_{label} ({c_i}) cannot exceed n_{label} ({n_i})")
    return n_i, c_i


def _lift(difference: float, baseline: float) -> float:
    return difference / baseline if baseline != 0 else math.nan


# --------------------------------------------------------------------------------------------------
# Frequentist fixed-horizon tests
# --------------------------------------------------------------------------------------------------


def proportion_test(
    n_control: int,
    conversions_control: int,
    n_treatment: int,
    conversions_treatment: int,
    alpha: float = 0.05,
) -> TestResult:
    """Two-sided two-proportion z-test.

    p-value: z = (p_t - p_c) / sqrt(p(1-p)(1/n_c + 1/n_t)) with the pooled rate p, because under H0
    both arms share one rate. CI: difference +/- z_{1-alpha/2} * sqrt(p_c(1-p_c)/n_c + p_t(1-p_t)/n_t),
    because away from H0 the arms' variances differ. If both arms are all-0 or all-1 the difference
    is exactly 0 and the p-value is 1.
    """
    n_c, x_c = _binomial_arm("control", n_control, conversions_control)
    n_t, x_t = _binomial_arm("treatment", n_treatment, conversions_treatment)
    a = _probability_open("alpha", alpha)

    p_c, p_t = x_c / n_c, x_t / n_t
    diff = p_t - p_c
    pooled = (x_c + x_t) / (n_c + n_t)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
    p_value = 1.0 if se_pooled == 0 else float(2 * sps.norm.sf(abs(diff) / se_pooled))

    se = math.sqrt(p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t)
    half = float(sps.norm.isf(a / 2)) * se
    return TestResult(diff, _lift(diff, p_c), p_value, diff - half, diff + half)


def mean_test(
    n_control: int,
    mean_control: float,
    sd_control: float,
    n_treatment: int,
    mean_treatment: float,
    sd_treatment: float,
    alpha: float = 0.05,
) -> TestResult:
    """Welch's two-sided t-test from summary statistics (sample SDs, ddof=1).

    df = (v_c + v_t)^2 / (v_c^2/(n_c-1) + v_t^2/(n_t-1)) with v = sd^2/n; CI uses t_{1-alpha/2, df}.
    If both SDs are 0 the standard error is 0: the p-value is then 1 for equal means and 0 otherwise,
    and the CI collapses to the difference (the limit of the test as the SDs shrink).
    """
    n_c = _count("n_control", n_control, minimum=2)
    n_t = _count("n_treatment", n_treatment, minimum=2)
    m_c, m_t = _finite("mean_control", mean_control), _finite("mean_treatment", mean_treatment)
    s_c, s_t = _finite("sd_control", sd_control), _finite("sd_treatment", sd_treatment)
    if s_c < 0 or s_t < 0:
        raise ValueError(f"standard deviations must be >= 0, got {s_c} and {s_t}")
    a = _probability_open("alpha", alpha)

    diff = m_t - m_c
    v_c, v_t = s_c**2 / n_c, s_t**2 / n_t
    se = math.sqrt(v_c + v_t)
    if se == 0:
        return TestResult(diff, _lift(diff, m_c), 1.0 if diff == 0 else 0.0, diff, diff)
    df = (v_c + v_t) ** 2 / (v_c**2 / (n_c - 1) + v_t**2 / (n_t - 1))
    p_value = float(2 * sps.t.sf(abs(diff) / se, df))
    half = float(sps.t.isf(a / 2, df)) * se
    return TestResult(diff, _lift(diff, m_c), p_value, diff - half, diff + half)


# --------------------------------------------------------------------------------------------------
# Bayesian: chance to beat control, probability to be best
# --------------------------------------------------------------------------------------------------


def _miller_sum(a_a: int, b_a: int, a_b: int, b_b: int) -> float:
    """P(p_B > p_A) for p_A ~ Beta(a_a, b_a), p_B ~ Beta(a_b, b_b), integer a_b (a_b terms).

    sum_{i=0}^{a_b-1} B(a_a+i, b_a+b_b) / ((b_b+i) B(1+i, b_b) B(a_a, b_a)); the terms are formed in
    log space because the beta functions under- and overflow long before the ratio does.
    """
    i = np.arange(a_b, dtype=float)
    log_terms = (
        special.betaln(a_a + i, b_a + b_b) - np.log(b_b + i) - special.betaln(1 + i, b_b) - special.betaln(a_a, b_a)
    )
    return float(min(1.0, math.exp(special.logsumexp(log_terms))))


def _beta_logpdf(x: float, a: float, b: float) -> float:
    return float(special.xlogy(a - 1, x) + special.xlog1py(b - 1, -x) - special.betaln(a, b))


def _prob_best_by_quadrature(params: Sequence[tuple[float, float]], i: int) -> float:
    """P(X_i > X_j for all j != i) = integral of pdf_i(x) * prod_{j != i} cdf_j(x) dx."""
    a_i, b_i = params[i]
    # Only the region holding pdf_i's mass matters; integrating over all of [0, 1] lets quad sample
    # only the flat zero tails of a narrow posterior and report 0.
    lo = float(special.betaincinv(a_i, b_i, _TAIL))
    hi = float(special.betaincinv(a_i, b_i, 1 - _TAIL))
    if not hi > lo:
        return 0.0
    others = [p for j, p in enumerate(params) if j != i]

    def integrand(x: float) -> float:
        value = math.exp(_beta_logpdf(x, a_i, b_i))
        for a_j, b_j in others:
            value *= float(special.betainc(a_j, b_j, x))
        return value

    # Break points where any posterior has its mass, so quad resolves the steep steps of narrow
    # cdf_j inside pdf_i's window instead of stepping over them.
    marks: set[float] = set()
    for a_j, b_j in params:
        mean = a_j / (a_j + b_j)
        sd = math.sqrt(a_j * b_j / ((a_j + b_j) ** 2 * (a_j + b_j + 1)))
        marks.update(mean + k * sd for k in (-4, -2, -1, 0, 1, 2, 4))
    points = sorted(p for p in marks if lo < p < hi)
    value, _ = integrate.quad(
        integrand, lo, hi, points=points or None, limit=50 * (len(points) + 2), epsabs=1e-13, epsrel=1e-10
    )
    return float(value)


def chance_to_beat_control(
    n_control: int,
    conversions_control: int,
    n_treatment: int,
    conversions_treatment: int,
) -> float:
    """P(p_t > p_c) with independent Beta(1, 1) priors, i.e. posteriors Beta(1 + x, 1 + n - x).

    Exact via Evan Miller's closed-form sum. The sum needs a_t terms, but by the symmetries
    P(X > Y) = 1 - P(Y > X) and P(X > Y) = P(1 - Y > 1 - X) it can be taken over whichever of the four
    posterior parameters is smallest. When even that exceeds ``_MAX_CLOSED_FORM_TERMS`` (1e5), i.e.
    every arm has > 1e5 conversions and > 1e5 non-conversions, it integrates
    pdf_t(x) * cdf_c(x) over the treatment posterior's mass with ``scipy.integrate.quad`` instead
    (absolute error < 1e-9).
    """
    n_c, x_c = _binomial_arm("control", n_control, conversions_control)
    n_t, x_t = _binomial_arm("treatment", n_treatment, conversions_treatment)
    a_c, b_c = 1 + x_c, 1 + n_c - x_c
    a_t, b_t = 1 + x_t, 1 + n_t - x_t

    smallest = min(a_t, a_c, b_t, b_c)
    if smallest > _MAX_CLOSED_FORM_TERMS:
        return min(1.0, max(0.0, _prob_best_by_quadrature([(a_c, b_c), (a_t, b_t)], 1)))
    if smallest == a_t:
        return _miller_sum(a_c, b_c, a_t, b_t)
    if smallest == a_c:
        return 1.0 - _miller_sum(a_t, b_t, a_c, b_c)
    # Reflect x -> 1 - x: p_t > p_c  <=>  (1 - p_c) > (1 - p_t), with Beta(b, a) posteriors.
    if smallest == b_c:
        return _miller_sum(b_t, a_t, b_c, a_c)
    return 1.0 - _miller_sum(b_c, a_c, b_t, a_t)


def probability_best(arms: Sequence[tuple[int, int]]) -> list[float]:
    """P(each arm has the highest conversion rate); arms are ``(n, conversions)``, Beta(1, 1) priors.

    Exact up to quadrature error (< 1e-9): for each arm i, integrates
    pdf_i(x) * prod_{j != i} cdf_j(x) with ``scipy.integrate.quad`` over the central
    1 - 2e-15 mass of arm i's posterior, with break points at every posterior's mean +/- k sd so
    narrow posteriors are resolved. The result is renormalised to sum to 1 (a no-op up to
    quadrature error, which is checked).
    """
    if len(arms) < 2:
        raise ValueError(f"probability_best needs at least 2 arms, got {len(arms)}")
    params: list[tuple[float, float]] = []
    for k, arm in enumerate(arms):
        if len(arm) != 2:
            raise ValueError(f"arm {k} must be an (n, conversions) pair, got {arm!r}")
        n, x = _binomial_arm(f"arm{k}", arm[0], arm[1])
        params.append((1.0 + x, 1.0 + n - x))

    raw = [_prob_best_by_quadrature(params, i) for i in range(len(params))]
    total = sum(raw)
    if not abs(total - 1.0) < 1e-6:
        raise ArithmeticError(f"probability_best quadrature did not converge (sum {total!r})")
    return [r / total for r in raw]


# --------------------------------------------------------------------------------------------------
# Design and diagnostics
# --------------------------------------------------------------------------------------------------


def sample_size_per_variant(
    baseline_rate: float,
    relative_mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Users per variant to detect a relative lift ``relative_mde`` on ``baseline_rate`` (two-sided).

    Fleiss, no continuity correction, with p1 = baseline, p2 = baseline * (1 + relative_mde),
    p_bar = (p1 + p2) / 2:
    n = (z_{1-alpha/2} sqrt(2 p_bar (1 - p_bar)) + z_{1-beta} sqrt(p1(1-p1) + p2(1-p2)))^2 / (p2 - p1)^2,
    rounded up. The first term uses the pooled variance because the test statistic is computed
    under H0; the second uses the unpooled variance because power is evaluated under H1.
    """
    p1 = _probability_open("baseline_rate", baseline_rate)
    mde = _finite("relative_mde", relative_mde)
    if mde == 0:
        raise ValueError("relative_mde must be non-zero")
    a = _probability_open("alpha", alpha)
    pw = _probability_open("power", power)
    p2 = p1 * (1 + mde)
    if not 0.0 < p2 < 1.0:
        raise ValueError(f"baseline_rate * (1 + relative_mde) must be in (0, 1), got {p2}")

    p_bar = (p1 + p2) / 2
    z_a = float(sps.norm.isf(a / 2))
    z_b = float(sps.norm.ppf(pw))
    numerator = z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return _ceil_size(numerator * numerator, (p2 - p1) * (p2 - p1))


def _ceil_size(numerator: float, squared_effect: float) -> int:
    """``ceil(numerator / squared_effect)``, or ValueError when an effect too small (its square underflows to 0) or
    too large for a float makes the size meaningless."""
    size = numerator / squared_effect if squared_effect > 0 else math.inf
    if not math.isfinite(size):
        raise ValueError("relative_mde is too small (or too large) to size an experiment with")
    return math.ceil(size)


def srm_p_value(observed_counts: Sequence[int], expected_weights: Sequence[float]) -> float:
    """Sample-ratio-mismatch p-value: Pearson chi-square goodness of fit, df = k - 1.

    Weights are normalised, so ``[1, 1]`` and ``[0.5, 0.5]`` are equivalent.
    """
    if len(observed_counts) != len(expected_weights):
        raise ValueError(
            f"observed_counts ({len(observed_counts)}) and expected_weights ({len(expected_weights)}) "
            "must have the same length"
        )
    if len(observed_counts) < 2:
        raise ValueError("srm_p_value needs at least 2 variants")
    counts = [_count(f"observed_counts[{i}]", c) for i, c in enumerate(observed_counts)]
    weights = [_finite(f"expected_weights[{i}]", w) for i, w in enumerate(expected_weights)]
    if any(w <= 0 for w in weights):
        raise ValueError(f"expected_weights must all be > 0, got {list(expected_weights)!r}")
    total = sum(counts)
    if total == 0:
        raise ValueError("observed_counts must not all be zero")

    weight_sum = sum(weights)
    statistic = 0.0
    for c, w in zip(counts, weights, strict=True):
        expected = total * w / weight_sum
        statistic += (c - expected) ** 2 / expected
    return float(sps.chi2.sf(statistic, len(counts) - 1))


# --------------------------------------------------------------------------------------------------
# Sequential testing
# --------------------------------------------------------------------------------------------------


def _msprt(diff: float, variance: float, alpha: float, tau2: float) -> tuple[float, float]:
    """The normal-mixture mSPRT for an estimated difference ``diff`` with ``variance`` > 0 and mixing variance
    ``tau2``: (always-valid p-value, half-width of the 1 - ``alpha`` confidence sequence)."""
    # log Lambda(0); staying in logs avoids overflow of exp() for large, clear-cut experiments.
    log_lr = 0.5 * math.log(variance / (variance + tau2)) + tau2 * diff**2 / (2 * variance * (variance + tau2))
    half = math.sqrt(
        variance * (variance + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((variance + tau2) / variance))
    )
    return min(1.0, math.exp(-log_lr)), half


def always_valid_proportion_test(
    n_control: int,
    conversions_control: int,
    n_treatment: int,
    conversions_treatment: int,
    alpha: float = 0.05,
    tau_squared: float = DEFAULT_TAU_SQUARED,
) -> TestResult:
    """Always-valid p-value and CI for p_t - p_c by the normal-mixture mSPRT (Johari et al. 2017/2022).

    With theta_hat = p_t - p_c, its variance V = p_c(1-p_c)/n_c + p_t(1-p_t)/n_t and mixing
    distribution theta ~ N(theta_0, tau^2), the mixture likelihood ratio against H0: theta = theta_0 is

        Lambda(theta_0) = sqrt(V / (V + tau^2)) * exp(tau^2 (theta_hat - theta_0)^2 / (2 V (V + tau^2)))

    (Johari, Koomen, Pekelis & Walsh 2022, Operations Research 70(3): the normal-mixture mSPRT with
    the two-sample variance plugged in, as in Optimizely's Stats Engine). Then

        p_value = min(1, 1 / Lambda(0))
        CI      = theta_hat +/- sqrt(V (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V)))

    the CI being {theta_0 : Lambda(theta_0) < 1/alpha}, so it excludes 0 exactly when
    p_value < alpha. P(p_value <= alpha at any look) <= alpha under H0, so the result may be checked
    after every new observation and acted on at any data-dependent time. Taking the running minimum
    of p_value and the running intersection of the CIs across looks keeps that guarantee and makes
    the display monotone; the caller owns that state. The guarantee relies on the normal
    approximation of theta_hat, so it is approximate for very small samples. ``tau_squared`` is the
    mixing variance: choose it near the square of the absolute lift you expect (default 1e-4).
    relative_lift is the point estimate difference / p_c, as in ``proportion_test``.
    """
    n_c, x_c = _binomial_arm("control", n_control, conversions_control)
    n_t, x_t = _binomial_arm("treatment", n_treatment, conversions_treatment)
    a = _probability_open("alpha", alpha)
    tau2 = _finite("tau_squared", tau_squared)
    if tau2 <= 0:
        raise ValueError(f"tau_squared must be > 0, got {tau2}")

    p_c, p_t = x_c / n_c, x_t / n_t
    diff = p_t - p_c
    variance = p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t
    if variance == 0:
        # Every observation identical in both arms (e.g. no conversions yet): no evidence either way.
        return TestResult(diff, _lift(diff, p_c), 1.0, -1.0, 1.0)

    p_value, half = _msprt(diff, variance, a, tau2)
    # A difference of proportions lies in [-1, 1]; clipping keeps early, wide intervals meaningful.
    return TestResult(diff, _lift(diff, p_c), p_value, max(-1.0, diff - half), min(1.0, diff + half))


# --------------------------------------------------------------------------------------------------
# Multiple comparisons and variance reduction
# --------------------------------------------------------------------------------------------------


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, returned in input order.

    With p_(1) <= ... <= p_(m): adj_(k) = min(1, max_{j <= k} (m - j + 1) p_(j)). The running max
    makes the adjusted values monotone in the raw ones, so rejecting adj <= alpha reproduces Holm's
    step-down procedure.
    """
    ps = [_finite(f"p_values[{i}]", p) for i, p in enumerate(p_values)]
    if any(not 0.0 <= p <= 1.0 for p in ps):
        raise ValueError(f"p-values must lie in [0, 1], got {list(p_values)!r}")
    m = len(ps)
    order = sorted(range(m), key=ps.__getitem__)
    adjusted = [0.0] * m
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, (m - rank) * ps[idx])
        adjusted[idx] = min(1.0, running)
    return adjusted


def cuped_adjust(y: np.ndarray, x: np.ndarray) -> CupedResult:
    """CUPED: y_cv = y - theta (x - mean(x)) with theta = cov(y, x) / var(x).

    ``y`` is the in-experiment metric and ``x`` the same users' pre-experiment covariate, for the
    users of *all* variants pooled; split ``adjusted`` by variant afterwards. mean(y_cv) == mean(y),
    and variance_reduction = 1 - var(y_cv)/var(y) equals the squared sample correlation of y and x.
    """
    # theta must come from the pooled data: one theta for every arm makes the adjustment the same
    # function of x in each arm, and because x is pre-experiment (independent of assignment) the
    # term theta * (mean_x_t - mean_x_c) has expectation 0, so the effect estimate stays unbiased.
    # Per-arm thetas would let the treatment itself change the adjustment and bias the estimate.
    y_arr = np.asarray(y, dtype=float)
    x_arr = np.asarray(x, dtype=float)
    if y_arr.ndim != 1 or x_arr.ndim != 1:
        raise ValueError(f"y and x must be 1-D arrays, got shapes {y_arr.shape} and {x_arr.shape}")
    if y_arr.shape != x_arr.shape:
        raise ValueError(f"y and x must have the same length, got {y_arr.size} and {x_arr.size}")
    if y_arr.size < 2:
        raise ValueError(f"cuped_adjust needs at least 2 observations, got {y_arr.size}")
    if not (np.isfinite(y_arr).all() and np.isfinite(x_arr).all()):
        raise ValueError("y and x must contain only finite values")

    x_centered = x_arr - x_arr.mean()
    var_x = float(np.dot(x_centered, x_centered)) / (x_arr.size - 1)
    if var_x == 0:
        raise ValueError("x has zero variance: the covariate carries no information, theta is undefined")
    y_centered = y_arr - y_arr.mean()
    theta = float(np.dot(y_centered, x_centered)) / (x_arr.size - 1) / var_x

    adjusted = y_arr - theta * x_centered
    adjusted.setflags(write=False)
    var_y = float(np.var(y_arr, ddof=1))
    # A constant metric cannot be made less variable; report no reduction instead of 0/0.
    reduction = 1.0 - float(np.var(adjusted, ddof=1)) / var_y if var_y > 0 else 0.0
    return CupedResult(theta=theta, adjusted=adjusted, variance_reduction=reduction)


# --------------------------------------------------------------------------------------------------
# Ratio metrics over randomisation units (delta method)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatioSummary:
    """One arm of a ratio metric sum(y) / sum(x), summarised by per-unit sums.

    For unit i (the thing randomised: a customer), y_i is the numerator (e.g. lists clicked) and x_i
    the denominator (lists shown). The sums of squares and cross-products are all the delta method
    needs, so the database can aggregate them without sending per-unit rows.
    """

    units: int
    sum_y: float
    sum_x: float
    sum_yy: float
    sum_xx: float
    sum_xy: float

    @classmethod
    def from_units(cls, y: np.ndarray | Sequence[float], x: np.ndarray | Sequence[float]) -> RatioSummary:
        y_arr, x_arr = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
        if y_arr.ndim != 1 or y_arr.shape != x_arr.shape:
            raise ValueError(f"y and x must be 1-D arrays of one length, got {y_arr.shape} and {x_arr.shape}")
        return cls(
            units=int(y_arr.size),
            sum_y=float(y_arr.sum()),
            sum_x=float(x_arr.sum()),
            sum_yy=float(np.dot(y_arr, y_arr)),
            sum_xx=float(np.dot(x_arr, x_arr)),
            sum_xy=float(np.dot(y_arr, x_arr)),
        )

    @property
    def ratio(self) -> float:
        return self.sum_y / self.sum_x


def _ratio_arm(label: str, arm: RatioSummary) -> tuple[float, float]:
    """(ratio, delta-method variance of the ratio) of one arm.

    With unit means ybar, xbar, sample (co)variances s_yy, s_xx, s_xy (ddof 1) and r = ybar / xbar:
    Var(r) = (s_yy - 2 r s_xy + r^2 s_xx) / (n xbar^2)  (Deng, Knoblich & Lu 2018, eq. 4). This is the
    variance of the mean of the linearised unit values (y_i - r x_i) / xbar.
    """
    if not isinstance(arm, RatioSummary):
        raise ValueError(f"{label} must be a RatioSummary, got {type(arm).__name__}")
    n = _count(f"{label}.units", arm.units, minimum=2)
    sums = [_finite(f"{label}.{name}", getattr(arm, name)) for name in ("sum_y", "sum_x", "sum_yy", "sum_xx", "sum_xy")]
    sum_y, sum_x, sum_yy, sum_xx, sum_xy = sums
    if sum_x <= 0:
        raise ValueError(f"{label}.sum_x must be > 0, got {sum_x}")
    y_bar, x_bar = sum_y / n, sum_x / n
    r = sum_y / sum_x
    s_yy = (sum_yy - n * y_bar * y_bar) / (n - 1)
    s_xx = (sum_xx - n * x_bar * x_bar) / (n - 1)
    s_xy = (sum_xy - n * y_bar * x_bar) / (n - 1)
    # Rounding in the sums can push an exactly-zero variance a hair below zero.
    variance = max(0.0, (s_yy - 2 * r * s_xy + r * r * s_xx) / (n * x_bar * x_bar))
    return r, variance


def ratio_test(control: RatioSummary, treatment: RatioSummary, alpha: float = 0.05) -> TestResult:
    """Two-sided z-test and Wald CI of r_t - r_c for a ratio metric, by the delta method.

    se = sqrt(Var(r_c) + Var(r_t)) with each variance from ``_ratio_arm``; p = 2 (1 - Phi(|d| / se)),
    CI = d +/- z_{1-alpha/2} se. Unpooled, because the delta method has no pooled form for a ratio.
    With one observation per unit (x_i = 1) it reduces to the unpooled two-proportion z-test up to
    the n / (n - 1) of the sample variance. If both variances are 0 the p-value is 1 for equal ratios
    and 0 otherwise, and the CI collapses to the difference.
    """
    r_c, v_c = _ratio_arm("control", control)
    r_t, v_t = _ratio_arm("treatment", treatment)
    a = _probability_open("alpha", alpha)
    diff = r_t - r_c
    se = math.sqrt(v_c + v_t)
    if se == 0:
        return TestResult(diff, _lift(diff, r_c), 1.0 if diff == 0 else 0.0, diff, diff)
    p_value = float(2 * sps.norm.sf(abs(diff) / se))
    half = float(sps.norm.isf(a / 2)) * se
    return TestResult(diff, _lift(diff, r_c), p_value, diff - half, diff + half)


def always_valid_ratio_test(
    control: RatioSummary,
    treatment: RatioSummary,
    alpha: float = 0.05,
    tau_squared: float = DEFAULT_TAU_SQUARED,
) -> TestResult:
    """The normal-mixture mSPRT of ``always_valid_proportion_test`` with V = the delta-method variance
    Var(r_c) + Var(r_t), so that a ratio metric over correlated observations can be peeked at too.

    p_value = min(1, 1 / Lambda(0)); CI = d +/- sqrt(V (V + tau^2) / tau^2 (2 ln(1/alpha) + ln((V + tau^2) / V))),
    clipped to [-1, 1] only when both ratios lie in [0, 1] (a rate such as CTR).
    """
    r_c, v_c = _ratio_arm("control", control)
    r_t, v_t = _ratio_arm("treatment", treatment)
    a = _probability_open("alpha", alpha)
    tau2 = _finite("tau_squared", tau_squared)
    if tau2 <= 0:
        raise ValueError(f"tau_squared must be > 0, got {tau2}")
    diff = r_t - r_c
    variance = v_c + v_t
    is_rate = 0.0 <= r_c <= 1.0 and 0.0 <= r_t <= 1.0
    if variance == 0:
        # No variation in either arm yet: no evidence either way.
        return TestResult(diff, _lift(diff, r_c), 1.0, -1.0 if is_rate else -math.inf, 1.0 if is_rate else math.inf)
    p_value, half = _msprt(diff, variance, a, tau2)
    low, high = diff - half, diff + half
    if is_rate:
        low, high = max(-1.0, low), min(1.0, high)
    return TestResult(diff, _lift(diff, r_c), p_value, low, high)


def ratio_chance_to_beat_control(control: RatioSummary, treatment: RatioSummary) -> float:
    """P(r_t > r_c) = Phi(d / se): the posterior under a flat prior with the normal (delta-method)
    likelihood of d, as GrowthBook's Bayesian engine does for ratio metrics.

    An approximation, unlike ``chance_to_beat_control``'s exact Beta posteriors, which would need the
    observations to be independent; lists of one customer are not. With se = 0: 1, 0 or 0.5.
    """
    r_c, v_c = _ratio_arm("control", control)
    r_t, v_t = _ratio_arm("treatment", treatment)
    diff = r_t - r_c
    se = math.sqrt(v_c + v_t)
    if se == 0:
        return 0.5 if diff == 0 else float(diff > 0)
    return float(sps.norm.cdf(diff / se))


def ratio_sample_size_per_variant(
    control: RatioSummary,
    relative_mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Units per variant to detect a relative lift ``relative_mde`` of the control's ratio (two-sided).

    n = (z_{1-alpha/2} + z_{power})^2 * 2 sigma^2 / (r * relative_mde)^2, rounded up, with
    sigma^2 = n_c Var(r_c) the per-unit variance of the linearised metric (delta method), assumed the
    same in both arms, and r the control's current ratio.
    """
    r, variance = _ratio_arm("control", control)
    mde = _finite("relative_mde", relative_mde)
    if mde == 0:
        raise ValueError("relative_mde must be non-zero")
    a = _probability_open("alpha", alpha)
    pw = _probability_open("power", power)
    effect = r * mde
    if effect == 0:
        raise ValueError("the control's ratio is 0: a relative effect on it is 0 too")
    sigma2 = control.units * variance
    if sigma2 == 0:
        raise ValueError("the linearised metric does not vary across units yet")
    z = float(sps.norm.isf(a / 2)) + float(sps.norm.ppf(pw))
    return _ceil_size(z * z * 2 * sigma2, effect * effect)
