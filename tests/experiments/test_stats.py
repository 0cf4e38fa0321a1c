"""Tests for experiments.stats against independent implementations (scipy, statsmodels, R, Monte Carlo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from experiments import stats
from experiments.stats import (
    CupedResult,
    TestResult,
    always_valid_proportion_test,
    chance_to_beat_control,
    cuped_adjust,
    holm_adjust,
    mean_test,
    probability_best,
    proportion_test,
    sample_size_per_variant,
    srm_p_value,
)

MC_DRAWS = 2_000_000
MC_ATOL = 1e-3  # "agrees to 3 decimals"; the MC standard error is <= 3.5e-4 at 2e6 draws

# --------------------------------------------------------------------------------------------------
# proportion_test
# --------------------------------------------------------------------------------------------------

PROPORTION_CASES = [
    # (n_c, x_c, n_t, x_t)
    (1000, 100, 1000, 130),
    (1000, 130, 1000, 100),
    (5000, 260, 4800, 300),
    (120, 7, 95, 3),
    (20000, 10000, 20500, 10100),
    (50, 0, 60, 4),
]


@pytest.mark.parametrize(("n_c", "x_c", "n_t", "x_t"), PROPORTION_CASES)
def test_proportion_test_matches_statsmodels(n_c: int, x_c: int, n_t: int, x_t: int) -> None:
    result = proportion_test(n_c, x_c, n_t, x_t)

    # proportions_ztest's default (prop_var=False) is the pooled-variance z-test.
    _, expected_p = proportions_ztest([x_t, x_c], [n_t, n_c], alternative="two-sided")
    assert result.p_value == pytest.approx(expected_p, rel=1e-10)

    lo, hi = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff", alpha=0.05)
    assert result.ci_low == pytest.approx(lo, abs=1e-12)
    assert result.ci_high == pytest.approx(hi, abs=1e-12)

    assert result.difference == pytest.approx(x_t / n_t - x_c / n_c, abs=1e-15)
    if x_c == 0:
        assert math.isnan(result.relative_lift)
    else:
        assert result.relative_lift == pytest.approx((x_t / n_t) / (x_c / n_c) - 1, rel=1e-12)


def test_proportion_test_matches_r_prop_test() -> None:
    # R 4.2.2: prop.test(c(130, 100), c(1000, 1000), correct = FALSE)$p.value -> 0.03548845
    assert proportion_test(1000, 100, 1000, 130).p_value == pytest.approx(0.03548845, abs=5e-9)


def test_proportion_test_alpha_changes_only_the_interval() -> None:
    wide = proportion_test(1000, 100, 1000, 130, alpha=0.01)
    narrow = proportion_test(1000, 100, 1000, 130, alpha=0.10)
    lo, hi = confint_proportions_2indep(130, 1000, 100, 1000, method="wald", compare="diff", alpha=0.01)
    assert (wide.ci_low, wide.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high
    assert wide.p_value == narrow.p_value


def test_proportion_test_degenerate_arms() -> None:
    r = proportion_test(100, 0, 100, 0)
    assert r.p_value == 1.0
    assert (r.difference, r.ci_low, r.ci_high) == (0.0, 0.0, 0.0)
    assert math.isnan(r.relative_lift)
    assert proportion_test(100, 100, 80, 80).p_value == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((100, 101, 100, 5), "cannot exceed"),
        ((100, 5, 100, 101), "cannot exceed"),
        ((0, 0, 100, 5), "n_control"),
        ((100, -1, 100, 5), "conversions_control"),
        ((100.5, 5, 100, 5), "integer"),
        ((100, 5, True, 1), "integer"),
    ],
)
def test_proportion_test_rejects_bad_counts(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        proportion_test(*args)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, float("nan")])
def test_proportion_test_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        proportion_test(100, 5, 100, 6, alpha=alpha)


def test_proportion_test_accepts_numpy_integers() -> None:
    a = proportion_test(np.int64(1000), np.int32(100), 1000, 130)
    assert a == proportion_test(1000, 100, 1000, 130)
    assert isinstance(a, TestResult)


# --------------------------------------------------------------------------------------------------
# mean_test
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n_c", "n_t", "shift", "scale_t"), [(1, 40, 55, 0.4, 2.0), (2, 500, 300, 0.05, 0.7)])
def test_mean_test_matches_scipy_welch_on_raw_data(seed: int, n_c: int, n_t: int, shift: float, scale_t: float) -> None:
    rng = np.random.default_rng(seed)
    control = rng.normal(10.0, 1.0, n_c)
    treatment = rng.normal(10.0 + shift, scale_t, n_t)
    result = mean_test(
        n_c, control.mean(), control.std(ddof=1), n_t, treatment.mean(), treatment.std(ddof=1), alpha=0.1
    )

    reference = sps.ttest_ind(treatment, control, equal_var=False)
    ci = reference.confidence_interval(confidence_level=0.9)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.ci_low == pytest.approx(ci.low, rel=1e-9)
    assert result.ci_high == pytest.approx(ci.high, rel=1e-9)
    assert result.difference == pytest.approx(treatment.mean() - control.mean(), rel=1e-12)
    assert result.relative_lift == pytest.approx(treatment.mean() / control.mean() - 1, rel=1e-9)


@pytest.mark.parametrize(
    "summary",
    [(50, 10.0, 2.0, 60, 11.0, 3.0), (5, 3.2, 0.5, 7, 2.9, 1.7), (1000, 0.0, 1.0, 900, 0.1, 1.0)],
)
def test_mean_test_matches_scipy_from_stats(summary: tuple) -> None:
    n_c, m_c, s_c, n_t, m_t, s_t = summary
    result = mean_test(n_c, m_c, s_c, n_t, m_t, s_t)
    _, expected = sps.ttest_ind_from_stats(m_t, s_t, n_t, m_c, s_c, n_c, equal_var=False)
    assert result.p_value == pytest.approx(expected, rel=1e-9)
    if m_c == 0:
        assert math.isnan(result.relative_lift)


def test_mean_test_zero_variance() -> None:
    same = mean_test(10, 5.0, 0.0, 10, 5.0, 0.0)
    assert same.p_value == 1.0
    assert same.ci_low == same.ci_high == 0.0
    different = mean_test(10, 5.0, 0.0, 10, 6.0, 0.0)
    assert different.p_value == 0.0
    assert different.ci_low == different.ci_high == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 1.0, 1.0, 10, 1.0, 1.0), "n_control"),
        ((10, 1.0, 1.0, 1, 1.0, 1.0), "n_treatment"),
        ((10, 1.0, -1.0, 10, 1.0, 1.0), "standard deviations"),
        ((10, float("nan"), 1.0, 10, 1.0, 1.0), "mean_control"),
        ((10, 1.0, 1.0, 10, 1.0, float("inf")), "sd_treatment"),
    ],
)
def test_mean_test_rejects_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_test(*args)


# --------------------------------------------------------------------------------------------------
# chance_to_beat_control
# --------------------------------------------------------------------------------------------------


def _mc_beat(n_c: int, x_c: int, n_t: int, x_t: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    c = rng.beta(1 + x_c, 1 + n_c - x_c, MC_DRAWS)
    t = rng.beta(1 + x_t, 1 + n_t - x_t, MC_DRAWS)
    return float(np.mean(t > c))


# The cases exercise each of the four symmetric forms of Miller's sum (smallest posterior parameter
# being a_t, a_c, b_c or b_t) and the quadrature fallback (all parameters > 1e5).
BEAT_CASES = [
    (1000, 100, 1000, 120),  # a_c smallest
    (1000, 120, 1000, 100),  # a_t smallest
    (1000, 950, 1000, 940),  # b_c smallest
    (1000, 940, 1000, 950),  # b_t smallest
    (30, 3, 25, 5),
    (10, 0, 12, 1),
    (80_000, 4_000, 75_000, 3_900),
    (500_000, 200_000, 480_000, 192_500),  # quadrature fallback
]


@pytest.mark.parametrize(("n_c", "x_c", "n_t", "x_t"), BEAT_CASES)
def test_chance_to_beat_control_matches_monte_carlo(n_c: int, x_c: int, n_t: int, x_t: int) -> None:
    exact = chance_to_beat_control(n_c, x_c, n_t, x_t)
    assert exact == pytest.approx(_mc_beat(n_c, x_c, n_t, x_t, seed=n_c + x_t), abs=MC_ATOL)


@pytest.mark.parametrize(("n_c", "x_c", "n_t", "x_t"), BEAT_CASES[:7])
def test_closed_form_and_quadrature_agree(
    n_c: int, x_c: int, n_t: int, x_t: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed_form = chance_to_beat_control(n_c, x_c, n_t, x_t)
    monkeypatch.setattr(stats, "_MAX_CLOSED_FORM_TERMS", 0)
    quadrature = chance_to_beat_control(n_c, x_c, n_t, x_t)
    assert closed_form == pytest.approx(quadrature, abs=1e-9)


def test_quadrature_fallback_agrees_with_long_closed_form(monkeypatch: pytest.MonkeyPatch) -> None:
    large = BEAT_CASES[-1]  # > 1e5 terms: quadrature by default
    quadrature = chance_to_beat_control(*large)
    monkeypatch.setattr(stats, "_MAX_CLOSED_FORM_TERMS", 10**7)
    closed_form = chance_to_beat_control(*large)  # ~2e5-term sum
    assert quadrature == pytest.approx(closed_form, abs=1e-9)


def test_chance_to_beat_control_symmetry() -> None:
    assert chance_to_beat_control(500, 50, 500, 50) == pytest.approx(0.5, abs=1e-12)
    forward = chance_to_beat_control(400, 30, 600, 55)
    backward = chance_to_beat_control(600, 55, 400, 30)
    assert forward + backward == pytest.approx(1.0, abs=1e-12)


def test_chance_to_beat_control_known_value() -> None:
    # Beta(2, 1) vs Beta(1, 2): P(X > Y) = integral of 2x * (2y - y^2)|_0^x dx = 5/6.
    assert chance_to_beat_control(1, 0, 1, 1) == pytest.approx(5 / 6, abs=1e-14)


@pytest.mark.parametrize(("args", "message"), [((10, 11, 10, 1), "cannot exceed"), ((10, 1, -5, 0), "n_treatment")])
def test_chance_to_beat_control_rejects_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chance_to_beat_control(*args)


# --------------------------------------------------------------------------------------------------
# probability_best
# --------------------------------------------------------------------------------------------------


def _mc_best(arms: list[tuple[int, int]], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.beta(1 + x, 1 + n - x, MC_DRAWS) for n, x in arms])
    return np.bincount(np.argmax(draws, axis=0), minlength=len(arms)) / MC_DRAWS


BEST_CASES = [
    [(1000, 100), (1000, 110), (1000, 105)],
    [(1000, 100), (1000, 110), (50, 6), (200_000, 21_000)],
    [(20, 2), (25, 4), (15, 1), (30, 3), (10, 2)],
    [(100_000, 5_000), (100_000, 5_080), (100_000, 5_050)],
    # Two very narrow posteriors (sd ~3e-4) beside a wide one: plain quad over [0, 1] returns 0 for
    # both narrow arms here (checked while writing this test), so this guards the windowing.
    [(100, 10), (1_000_000, 103_000), (1_000_000, 102_500)],
]


@pytest.mark.parametrize("arms", BEST_CASES)
def test_probability_best_matches_monte_carlo(arms: list[tuple[int, int]]) -> None:
    exact = probability_best(arms)
    assert sum(exact) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(exact, _mc_best(arms, seed=len(arms) * 7919), atol=MC_ATOL)


def test_probability_best_two_arms_equals_chance_to_beat_control() -> None:
    _, p_treatment = probability_best([(1000, 100), (1000, 120)])
    assert p_treatment == pytest.approx(chance_to_beat_control(1000, 100, 1000, 120), abs=1e-9)


def test_probability_best_identical_arms_are_equally_likely() -> None:
    np.testing.assert_allclose(probability_best([(300, 30)] * 4), [0.25] * 4, atol=1e-9)


@pytest.mark.parametrize(
    ("arms", "message"),
    [([(100, 10)], "at least 2"), ([(100, 10), (100, 101)], "cannot exceed"), ([(100, 10), (100,)], "pair")],
)
def test_probability_best_rejects_bad_input(arms: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        probability_best(arms)


# --------------------------------------------------------------------------------------------------
# sample_size_per_variant
# --------------------------------------------------------------------------------------------------


def _fleiss_by_hand(p1: float, p2: float, alpha: float, power: float) -> float:
    z_a = sps.norm.ppf(1 - alpha / 2)
    z_b = sps.norm.ppf(power)
    p_bar = (p1 + p2) / 2
    root = z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return root**2 / (p2 - p1) ** 2


# R's stats::power.prop.test(strict = FALSE) is this Fleiss formula. Values from R 4.2.2, e.g.
# power.prop.test(p1 = .5, p2 = .75, power = .9)$n -> 76.70693 (the example in its help page).
R_POWER_PROP_TEST = [
    # (baseline, relative_mde, alpha, power, R's n)
    (0.5, 0.5, 0.05, 0.9, 76.70693),
    (0.1, 0.1, 0.05, 0.8, 14750.79),
    (0.05, -0.2, 0.01, 0.9, 12786.36),
    (0.2, 0.25, 0.05, 0.8, 1093.739),
]


@pytest.mark.parametrize(("baseline", "mde", "alpha", "power", "r_n"), R_POWER_PROP_TEST)
def test_sample_size_matches_r_power_prop_test(
    baseline: float, mde: float, alpha: float, power: float, r_n: float
) -> None:
    n = sample_size_per_variant(baseline, mde, alpha=alpha, power=power)
    assert n == math.ceil(r_n)
    assert _fleiss_by_hand(baseline, baseline * (1 + mde), alpha, power) == pytest.approx(r_n, rel=1e-6)


def test_sample_size_gives_nominal_power_by_simulation() -> None:
    # Independent of the formula: run the pooled z-test at the returned n on simulated data.
    p1, mde = 0.1, 0.2
    n = sample_size_per_variant(p1, mde)
    rng = np.random.default_rng(20240607)
    reps = 20_000
    x_c = rng.binomial(n, p1, reps)
    x_t = rng.binomial(n, p1 * (1 + mde), reps)
    pooled = (x_c + x_t) / (2 * n)
    z = (x_t - x_c) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    power = np.mean(np.abs(z) > sps.norm.ppf(0.975))
    assert power == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 0.1), "baseline_rate"),
        ((1.0, 0.1), "baseline_rate"),
        ((0.1, 0.0), "non-zero"),
        ((0.6, 0.8), r"\(0, 1\)"),
        ((0.1, -1.0), r"\(0, 1\)"),
        ((0.1, 0.1, 0.0, 0.8), "alpha"),
        ((0.1, 0.1, 0.05, 1.0), "power"),
    ],
)
def test_sample_size_rejects_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_size_per_variant(*args)


# --------------------------------------------------------------------------------------------------
# srm_p_value
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "weights"),
    [([5120, 4880, 10100], [0.25, 0.25, 0.5]), ([50_300, 49_700], [1, 1]), ([1000, 2100, 2900], [1, 2, 3])],
)
def test_srm_matches_scipy_chisquare(counts: list[int], weights: list[float]) -> None:
    w = np.asarray(weights, dtype=float)
    expected = sps.chisquare(counts, f_exp=np.sum(counts) * w / w.sum()).pvalue
    assert srm_p_value(counts, weights) == pytest.approx(expected, rel=1e-10)


def test_srm_matches_r_chisq_test_and_normalises_weights() -> None:
    # R 4.2.2: chisq.test(c(5120, 4880, 10100), p = c(.25, .25, .5))$p.value -> 0.04440391
    assert srm_p_value([5120, 4880, 10100], [0.25, 0.25, 0.5]) == pytest.approx(0.04440391, abs=5e-9)
    assert srm_p_value([5120, 4880, 10100], [1, 1, 2]) == pytest.approx(
        srm_p_value([5120, 4880, 10100], [0.25, 0.25, 0.5]), rel=1e-12
    )


@pytest.mark.parametrize(
    ("counts", "weights", "message"),
    [
        ([10, 10], [0.5], "same length"),
        ([10], [1.0], "at least 2"),
        ([10, -1], [0.5, 0.5], "observed_counts"),
        ([10, 10], [0.5, 0.0], "> 0"),
        ([0, 0], [0.5, 0.5], "all be zero"),
        ([10, 10], [0.5, float("nan")], "finite"),
    ],
)
def test_srm_rejects_bad_input(counts: list, weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        srm_p_value(counts, weights)


# --------------------------------------------------------------------------------------------------
# always_valid_proportion_test
# --------------------------------------------------------------------------------------------------


def _mixture_likelihood_ratio(theta_hat: float, variance: float, tau2: float, theta0: float) -> float:
    """Lambda by direct numerical integration of the likelihood ratio over the N(theta0, tau2) prior."""
    sd = math.sqrt(variance)

    def integrand(theta: float) -> float:
        ratio = math.exp(sps.norm.logpdf(theta_hat, theta, sd) - sps.norm.logpdf(theta_hat, theta0, sd))
        return ratio * sps.norm.pdf(theta, theta0, math.sqrt(tau2))

    span = 12 * math.sqrt(tau2)
    value, _ = integrate.quad(integrand, theta0 - span, theta0 + span, points=[theta0, theta_hat], limit=200)
    return value


@pytest.mark.parametrize(
    ("n_c", "x_c", "n_t", "x_t", "tau2"),
    [(10_000, 1_000, 10_000, 1_100, 1e-4), (4_000, 200, 4_200, 260, 1e-4), (2_000, 600, 2_100, 640, 4e-4)],
)
def test_always_valid_matches_numerically_integrated_msprt(n_c: int, x_c: int, n_t: int, x_t: int, tau2: float) -> None:
    alpha = 0.05
    result = always_valid_proportion_test(n_c, x_c, n_t, x_t, alpha=alpha, tau_squared=tau2)
    p_c, p_t = x_c / n_c, x_t / n_t
    variance = p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t

    lam = _mixture_likelihood_ratio(p_t - p_c, variance, tau2, 0.0)
    assert result.p_value == pytest.approx(min(1.0, 1 / lam), rel=1e-6)
    # The CI ends are where the mixture likelihood ratio reaches 1/alpha.
    for end in (result.ci_low, result.ci_high):
        assert _mixture_likelihood_ratio(p_t - p_c, variance, tau2, end) == pytest.approx(1 / alpha, rel=1e-6)


def test_always_valid_ci_is_consistent_with_p_value_and_wider_than_fixed() -> None:
    for x_t in range(900, 1300, 25):
        seq = always_valid_proportion_test(10_000, 1_000, 10_000, x_t)
        fixed = proportion_test(10_000, 1_000, 10_000, x_t)
        assert (seq.ci_low > 0 or seq.ci_high < 0) == (seq.p_value < 0.05)
        assert seq.ci_low < fixed.ci_low
        assert fixed.ci_high < seq.ci_high
        assert seq.p_value >= fixed.p_value
        assert seq.difference == fixed.difference


def _peeking_false_positive_rates(n_sims: int, peeks: int, per_peek: int, p: float) -> tuple[float, float]:
    rng = np.random.default_rng(12345)
    x_c = np.cumsum(rng.binomial(per_peek, p, (n_sims, peeks)), axis=1)
    x_t = np.cumsum(rng.binomial(per_peek, p, (n_sims, peeks)), axis=1)
    av_rejected = 0
    naive_rejected = 0
    for s in range(n_sims):
        av = naive = False
        for k in range(peeks):
            n = per_peek * (k + 1)
            args = (n, int(x_c[s, k]), n, int(x_t[s, k]))
            av = av or always_valid_proportion_test(*args).p_value < 0.05
            naive = naive or proportion_test(*args).p_value < 0.05
        av_rejected += av
        naive_rejected += naive
    return av_rejected / n_sims, naive_rejected / n_sims


def test_always_valid_controls_type_one_error_under_continuous_peeking() -> None:
    always_valid, naive = _peeking_false_positive_rates(n_sims=400, peeks=50, per_peek=200, p=0.1)
    assert always_valid <= 0.05
    # The same data analysed with the fixed-horizon test at every peek rejects far more often: the
    # simulation is sensitive enough to catch a test that does not correct for peeking.
    assert naive > 0.12


def test_always_valid_has_power_against_a_real_effect() -> None:
    rng = np.random.default_rng(777)
    n = 20_000
    rejections = sum(
        always_valid_proportion_test(n, int(rng.binomial(n, 0.10)), n, int(rng.binomial(n, 0.115))).p_value < 0.05
        for _ in range(200)
    )
    assert rejections / 200 > 0.8


def test_always_valid_without_variance_has_no_evidence() -> None:
    result = always_valid_proportion_test(500, 0, 500, 0)
    assert result.p_value == 1.0
    assert (result.ci_low, result.ci_high) == (-1.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau_squared": 0.0}, "tau_squared"),
        ({"tau_squared": -1e-4}, "tau_squared"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_always_valid_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        always_valid_proportion_test(1000, 100, 1000, 110, **kwargs)


# --------------------------------------------------------------------------------------------------
# holm_adjust
# --------------------------------------------------------------------------------------------------


def test_holm_hand_computed_example() -> None:
    # Sorted: 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(1*0.04, 0.06)=0.06,
    # returned in input order. R 4.2.2 p.adjust(c(.01, .04, .03, .005), "holm") gives the same.
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)


def test_holm_caps_at_one_and_enforces_monotonicity() -> None:
    # 2*0.2=0.4 then max(1*0.5, 0.4)=0.5; and 2*0.6=1.2 is capped to 1, which then carries forward.
    assert holm_adjust([0.5, 0.2]) == pytest.approx([0.5, 0.4])
    assert holm_adjust([0.6, 0.7]) == [1.0, 1.0]
    assert holm_adjust([]) == []
    assert holm_adjust([0.03]) == [0.03]


def test_holm_matches_statsmodels() -> None:
    rng = np.random.default_rng(99)
    p = np.concatenate([rng.uniform(0, 0.02, 5), rng.uniform(0, 1, 15), [0.01, 0.01]])
    _, expected, _, _ = multipletests(p, method="holm")
    np.testing.assert_allclose(holm_adjust(list(p)), expected, rtol=1e-12, atol=0)


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=30))
def test_holm_properties(p_values: list[float]) -> None:
    adjusted = holm_adjust(p_values)
    assert len(adjusted) == len(p_values)
    for raw, adj in zip(p_values, adjusted, strict=True):
        assert raw <= adj <= 1.0
        assert adj <= min(1.0, raw * len(p_values)) + 1e-15  # never worse than Bonferroni
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    assert all(adjusted[i] <= adjusted[j] for i, j in zip(order, order[1:], strict=False))


@pytest.mark.parametrize("bad", [[0.1, 1.2], [-0.01], [float("nan")]])
def test_holm_rejects_invalid_p_values(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="p"):
        holm_adjust(bad)


# --------------------------------------------------------------------------------------------------
# cuped_adjust
# --------------------------------------------------------------------------------------------------


def _correlated(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(0, 1, n)
    return 3.0 + 2.0 * y, 10.0 + 5.0 * x  # y: mean 3, sd 2; x: mean 10, sd 5; corr rho


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_cuped_variance_reduction_is_rho_squared(rho: float) -> None:
    y, x = _correlated(200_000, rho, seed=int(rho * 100))
    result = cuped_adjust(y, x)
    assert isinstance(result, CupedResult)
    assert result.variance_reduction == pytest.approx(rho**2, abs=0.01)
    # In sample, 1 - var(y_cv)/var(y) is exactly the squared sample correlation.
    assert result.variance_reduction == pytest.approx(np.corrcoef(y, x)[0, 1] ** 2, rel=1e-9)
    assert result.theta == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)  # OLS slope
    assert result.theta == pytest.approx(rho * 2.0 / 5.0, abs=0.01)
    assert result.adjusted.mean() == pytest.approx(y.mean(), rel=1e-12)


def test_cuped_with_pooled_theta_keeps_effect_unbiased_and_reduces_its_variance() -> None:
    rng = np.random.default_rng(2013)
    effect, rho, n = 0.2, 0.7, 2_000
    plain, adjusted = [], []
    for _ in range(300):
        x = rng.normal(0, 1, 2 * n)
        y = rho * x + math.sqrt(1 - rho**2) * rng.normal(0, 1, 2 * n)
        treated = np.arange(2 * n) >= n
        y = y + effect * treated
        y_cv = cuped_adjust(y, x).adjusted
        plain.append(y[treated].mean() - y[~treated].mean())
        adjusted.append(y_cv[treated].mean() - y_cv[~treated].mean())
    se = math.sqrt(2 / n)
    assert np.mean(adjusted) == pytest.approx(effect, abs=3 * se * math.sqrt(1 - rho**2) / math.sqrt(300))
    assert np.var(adjusted) / np.var(plain) == pytest.approx(1 - rho**2, abs=0.12)


def test_cuped_result_is_read_only() -> None:
    result = cuped_adjust(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match="read-only"):
        result.adjusted[0] = 0.0


def test_cuped_constant_metric_has_no_reduction() -> None:
    result = cuped_adjust(np.zeros(5), np.arange(5.0))
    assert result.theta == 0.0
    assert result.variance_reduction == 0.0


@pytest.mark.parametrize(
    ("y", "x", "message"),
    [
        (np.ones(3), np.ones(4), "same length"),
        (np.ones((2, 2)), np.ones((2, 2)), "1-D"),
        (np.ones(1), np.ones(1), "at least 2"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "finite"),
        (np.array([1.0, 2.0]), np.array([3.0, 3.0]), "zero variance"),
    ],
)
def test_cuped_rejects_bad_input(y: np.ndarray, x: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cuped_adjust(y, x)


# --------------------------------------------------------------------------------------------------
# Ratio metrics by the delta method (CTR per customer)
# --------------------------------------------------------------------------------------------------


def _linearised_variance(y: np.ndarray, x: np.ndarray) -> float:
    """Var of sum(y)/sum(x) as the variance of the mean of (y_i - r x_i) / xbar: the delta method computed
    another way (Deng, Knoblich & Lu 2018, section 3), from the unit values instead of the sums."""
    r = y.sum() / x.sum()
    z = (y - r * x) / x.mean()
    return float(np.var(z, ddof=1) / z.size)


def _clustered_arm(rng: np.random.Generator, units: int, a: float = 0.5, b: float = 4.5) -> tuple[np.ndarray, ...]:
    """Customers with 1 + Poisson(7) lists each and their own click probability ~ Beta(a, b): lists of one customer
    are correlated (intra-class correlation 1 / (a + b + 1))."""
    lists = 1 + rng.poisson(7, size=units)
    clicked = rng.binomial(lists, rng.beta(a, b, size=units))
    return clicked.astype(float), lists.astype(float)


def test_ratio_test_on_a_hand_worked_example() -> None:
    # Control: r = 4/8 = 0.5, ybar = 1, xbar = 2, s_yy = s_xx = s_xy = 2/3:
    #   Var = (2/3 - 2 * 0.5 * 2/3 + 0.25 * 2/3) / (4 * 2^2) = 1/96.
    # Treatment: r = 7/10 = 0.7; linearised values (y - 0.7 x) / 2 = -0.05, -0.2, 0.15, -0.35, 0.45:
    #   Var = (0.39 / 4) / 5 = 0.0195.
    control = stats.RatioSummary.from_units([1, 0, 2, 1], [2, 1, 3, 2])
    treatment = stats.RatioSummary.from_units([2, 1, 1, 0, 3], [3, 2, 1, 1, 3])
    se = math.sqrt(1 / 96 + 0.0195)

    result = stats.ratio_test(control, treatment)

    assert result.difference == pytest.approx(0.2, abs=1e-15)
    assert result.relative_lift == pytest.approx(0.4)
    assert result.p_value == pytest.approx(2 * sps.norm.sf(0.2 / se), rel=1e-12)
    assert result.p_value == pytest.approx(0.2476, abs=1e-4)
    assert (result.ci_low, result.ci_high) == pytest.approx((0.2 - 1.959964 * se, 0.2 + 1.959964 * se), rel=1e-6)


def test_ratio_test_standard_error_matches_a_bootstrap_over_customers() -> None:
    rng = np.random.default_rng(20260302)
    y_c, x_c = _clustered_arm(rng, 600)
    y_t, x_t = _clustered_arm(rng, 600, a=0.6, b=4.4)
    result = stats.ratio_test(stats.RatioSummary.from_units(y_c, x_c), stats.RatioSummary.from_units(y_t, x_t))
    delta_se = (result.ci_high - result.ci_low) / (2 * sps.norm.isf(0.025))

    # Resample customers (never lists) with replacement, 4000 times per arm.
    boot = np.random.default_rng(7)
    idx_c = boot.integers(0, y_c.size, size=(4000, y_c.size))
    idx_t = boot.integers(0, y_t.size, size=(4000, y_t.size))
    diffs = y_t[idx_t].sum(1) / x_t[idx_t].sum(1) - y_c[idx_c].sum(1) / x_c[idx_c].sum(1)

    assert delta_se == pytest.approx(float(diffs.std(ddof=1)), rel=0.05)
    assert delta_se**2 == pytest.approx(_linearised_variance(y_c, x_c) + _linearised_variance(y_t, x_t), rel=1e-9)
    # The per-list test ignores the clustering: its interval is far too narrow.
    per_list = stats.proportion_test(int(x_c.sum()), int(y_c.sum()), int(x_t.sum()), int(y_t.sum()))
    assert (per_list.ci_high - per_list.ci_low) < 0.75 * (result.ci_high - result.ci_low)
    # Chance to beat control (normal posterior) against the bootstrap's share of positive differences.
    beat = stats.ratio_chance_to_beat_control(
        stats.RatioSummary.from_units(y_c, x_c), stats.RatioSummary.from_units(y_t, x_t)
    )
    assert beat == pytest.approx(float((diffs > 0).mean()), abs=0.02)


def test_ratio_test_keeps_its_false_positive_rate_on_clustered_data_where_the_per_list_test_does_not() -> None:
    rng = np.random.default_rng(11)
    sims = 600
    ratio_rejections = per_list_rejections = 0
    for _ in range(sims):
        y_c, x_c = _clustered_arm(rng, 300)
        y_t, x_t = _clustered_arm(rng, 300)  # no true difference
        ratio = stats.ratio_test(stats.RatioSummary.from_units(y_c, x_c), stats.RatioSummary.from_units(y_t, x_t))
        per_list = stats.proportion_test(int(x_c.sum()), int(y_c.sum()), int(x_t.sum()), int(y_t.sum()))
        ratio_rejections += ratio.p_value < 0.05
        per_list_rejections += per_list.p_value < 0.05

    assert ratio_rejections / sims < 0.075  # nominal 5%; Monte Carlo SE about 0.9%
    assert per_list_rejections / sims > 0.12


def test_ratio_test_with_one_list_per_customer_is_the_unpooled_proportion_interval() -> None:
    n_c, x_c, n_t, x_t = 2000, 210, 2100, 260
    control = stats.RatioSummary.from_units(np.repeat([1.0, 0.0], [x_c, n_c - x_c]), np.ones(n_c))
    treatment = stats.RatioSummary.from_units(np.repeat([1.0, 0.0], [x_t, n_t - x_t]), np.ones(n_t))
    low, high = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff")

    result = stats.ratio_test(control, treatment)

    assert result.difference == pytest.approx(x_t / n_t - x_c / n_c)
    # Sample variances (ddof 1) against p(1 - p): the half-width is wider by a factor between 1 and
    # sqrt(n_min / (n_min - 1)).
    ratio = (result.ci_high - result.ci_low) / (high - low)
    assert 1.0 < ratio <= math.sqrt(n_c / (n_c - 1)) + 1e-12


def test_always_valid_ratio_test_is_the_msprt_with_the_delta_variance() -> None:
    rng = np.random.default_rng(3)
    y_c, x_c = _clustered_arm(rng, 800)
    y_t, x_t = _clustered_arm(rng, 800, a=0.7, b=4.3)
    control, treatment = stats.RatioSummary.from_units(y_c, x_c), stats.RatioSummary.from_units(y_t, x_t)
    v = _linearised_variance(y_c, x_c) + _linearised_variance(y_t, x_t)
    d = y_t.sum() / x_t.sum() - y_c.sum() / x_c.sum()
    tau2 = stats.DEFAULT_TAU_SQUARED
    likelihood_ratio = math.sqrt(v / (v + tau2)) * math.exp(tau2 * d * d / (2 * v * (v + tau2)))

    result = stats.always_valid_ratio_test(control, treatment)

    assert result.p_value == pytest.approx(min(1.0, 1 / likelihood_ratio), rel=1e-9)
    assert (result.ci_low > 0 or result.ci_high < 0) == (result.p_value < 0.05)
    # Safe to peek at, hence never more significant than the fixed-horizon test on the same data.
    assert result.p_value >= stats.ratio_test(control, treatment).p_value


def test_ratio_sample_size_matches_a_two_sample_z_power_calculation() -> None:
    from statsmodels.stats.power import NormalIndPower

    rng = np.random.default_rng(5)
    y, x = _clustered_arm(rng, 5000)
    control = stats.RatioSummary.from_units(y, x)
    sigma = math.sqrt(_linearised_variance(y, x) * y.size)
    effect = control.ratio * 0.1

    n = stats.ratio_sample_size_per_variant(control, 0.1)

    expected = NormalIndPower().solve_power(effect_size=effect / sigma, alpha=0.05, power=0.8, ratio=1.0)
    assert n == math.ceil(expected)
    # Sized in customers: far fewer units than the lists the per-list formula would ask for, yet each customer
    # brings eight lists on average, so more lists in all (the clustering costs power).
    per_list_n = stats.sample_size_per_variant(control.ratio, 0.1)
    assert n < per_list_n < n * float(x.mean())


def test_ratio_functions_reject_unusable_input() -> None:
    one = stats.RatioSummary.from_units([1.0], [2.0])
    ok = stats.RatioSummary.from_units([1.0, 0.0], [2.0, 1.0])
    with pytest.raises(ValueError, match="units must be >= 2"):
        stats.ratio_test(one, ok)
    with pytest.raises(ValueError, match="sum_x must be > 0"):
        stats.ratio_test(ok, stats.RatioSummary.from_units([0.0, 0.0], [0.0, 0.0]))
    with pytest.raises(ValueError, match="does not vary"):
        stats.ratio_sample_size_per_variant(stats.RatioSummary.from_units([1.0, 2.0], [2.0, 4.0]), 0.1)
