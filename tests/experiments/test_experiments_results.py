"""experiment_results on simulated data: a true CTR lift is found, SRM is flagged when the split is off, attribution
respects its window, Holm adjusts three-way comparisons and CUPED reduces variance."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import numpy as np
import pytest
from django.contrib.auth.models import AbstractUser

from catalog.models import Customer
from events.models import Interaction
from experiments import services, stats
from experiments.config import VariantConfig
from experiments.models import Experiment, Impression, Variant
from experiments.results import METRICS, ExperimentResults, ExperimentSpec, VariantInfo, VariantTotals, results_build
from experiments.stats import (
    RatioSummary,
    always_valid_ratio_test,
    holm_adjust,
    proportion_test,
    ratio_chance_to_beat_control,
    ratio_sample_size_per_variant,
    ratio_test,
)
from experiments.validation import VariantSpec
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db

START = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _fresh_snapshot() -> None:
    services.assignment_cache_clear()


@pytest.fixture
def user(django_user_model: type[AbstractUser]) -> AbstractUser:
    return django_user_model.objects.create_user("merchandiser")


@pytest.fixture
def items() -> list[int]:
    return [ItemFactory().pk for _ in range(12)]


def _experiment(
    user: AbstractUser, key: str, weights: dict[str, float], *, primary: str = "ctr", **extra: object
) -> tuple[Experiment, dict[str, Variant]]:
    names = list(weights)
    experiment = services.experiment_create(
        key=key,
        name=key,
        surface="home",
        primary_metric=primary,
        variants=[
            VariantSpec(name, weight, i == 0, {} if i == 0 else {"exploration_share": 0.05 * i})
            for i, (name, weight) in enumerate(weights.items())
        ],
        **extra,
    )
    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    Experiment.objects.filter(pk=experiment.pk).update(start_at=START)  # as if started on START
    experiment.refresh_from_db()
    return experiment, {v.name: v for v in Variant.objects.filter(experiment=experiment) if v.name in names}


def _customers(prefix: str, n: int) -> list[Customer]:
    return Customer.objects.bulk_create(Customer(external_id=f"{prefix}-{i}") for i in range(n))


def _impression(
    experiment: Experiment, variant: Variant, customer: Customer, at: dt.datetime, items: list[int], request_id: str
) -> Impression:
    return Impression(
        request_id=request_id, served_at=at, surface="home", customer=customer, experiment=experiment,
        variant=variant, item_pks=items,
    )  # fmt: skip


def _event(
    kind: int, customer: Customer, item: int, at: dt.datetime, *, request_id: str = "", value=None
) -> Interaction:
    return Interaction(
        event_id=f"e-{kind}-{customer.pk}-{item}-{at.timestamp()}-{request_id}", customer=customer, item_id=item,
        type=kind, occurred_at=at, request_id=request_id, value=value,
    )  # fmt: skip


def test_a_true_ctr_lift_is_detected(user: AbstractUser, items: list[int]) -> None:
    experiment, variants = _experiment(user, "ctr-lift", {"control": 0.5, "b": 0.5})
    true_ctr = {"control": 0.10, "b": 0.13}
    rng = np.random.default_rng(2026)
    customers = _customers("ctr", 1600)
    # Units split by the real assignment, as serving would.
    assigned = {c.pk: services.assign(surface="home", unit_id=c.external_id).variant for c in customers}
    impressions, clicks = [], []
    for customer in customers:
        name = assigned[customer.pk]
        for day in range(4):
            at = START + dt.timedelta(days=day, minutes=int(rng.integers(0, 600)))
            shown = [int(pk) for pk in rng.choice(items, size=4, replace=False)]
            request_id = f"ctr-{customer.pk}-{day}"
            impressions.append(_impression(experiment, variants[name], customer, at, shown, request_id))
            if rng.random() < true_ctr[name]:
                clicks.append(
                    _event(
                        Interaction.Type.CLICK, customer, shown[0], at + dt.timedelta(minutes=1), request_id=request_id
                    )
                )
    Impression.objects.bulk_create(impressions)
    Interaction.objects.bulk_create(clicks)

    results = services.experiment_results(key="ctr-lift")

    control, b = results.variant("control"), results.variant("b")
    split = Counter(assigned.values())
    assert (control.exposures, b.exposures) == (split["control"], split["b"])
    assert (control.impressions, b.impressions) == (4 * split["control"], 4 * split["b"])
    assert control.clicks + b.clicks == len(clicks)
    assert b.ctr.value > control.ctr.value
    comparison = b.ctr.vs_control
    assert comparison.p_value < 0.05
    assert comparison.ci_low > 0
    assert comparison.chance_to_beat_control > 0.95
    assert comparison.always_valid_p_value is not None
    assert comparison.always_valid_p_value >= comparison.p_value
    assert control.ctr.vs_control is None
    assert results.srm_p_value > 0.001
    assert not results.srm_flagged
    assert b.sample_size_required is not None
    # CTR is sized in customers: its lists are not independent observations.
    assert b.sample_size_progress == b.exposures / b.sample_size_required
    # A cumulative CTR point per variant and day of the four days.
    assert len(results.series) == 8
    last_b = [p for p in results.series if p.variant == "b"][-1]
    assert last_b.primary_value == pytest.approx(b.ctr.value)
    assert last_b.exposures == b.exposures


def test_ctr_is_analysed_per_customer_by_the_delta_method(user: AbstractUser, items: list[int]) -> None:
    """Customers see different numbers of lists and click with their own propensity: the results must treat the
    customer, not the list, as the observation (the aggregates per customer are recomputed here from the simulation).
    """
    experiment, variants = _experiment(user, "ctr-units", {"control": 0.5, "b": 0.5})
    rng = np.random.default_rng(99)
    customers = _customers("units", 400)
    assigned = {c.pk: services.assign(surface="home", unit_id=c.external_id).variant for c in customers}
    per_unit: dict[str, tuple[list[float], list[float]]] = {"control": ([], []), "b": ([], [])}
    impressions, clicks = [], []
    for customer in customers:
        name = assigned[customer.pk]
        lists = int(rng.integers(1, 9))
        propensity = rng.beta(0.6, 3.4) * (1.3 if name == "b" else 1.0)
        clicked = 0
        for n in range(lists):
            at = START + dt.timedelta(hours=n, minutes=int(rng.integers(0, 50)))
            request_id = f"units-{customer.pk}-{n}"
            impressions.append(_impression(experiment, variants[name], customer, at, items[:4], request_id))
            if rng.random() < propensity:
                clicked += 1
                # Two clicks on one list count once: CTR is clicked lists / lists.
                for item in items[: int(rng.integers(1, 3))]:
                    clicks.append(
                        _event(
                            Interaction.Type.CLICK, customer, item, at + dt.timedelta(seconds=30), request_id=request_id
                        )
                    )
        per_unit[name][0].append(clicked)
        per_unit[name][1].append(lists)
    Impression.objects.bulk_create(impressions)
    Interaction.objects.bulk_create(clicks)

    results = services.experiment_results(key="ctr-units")

    summaries = {name: RatioSummary.from_units(np.array(y), np.array(x)) for name, (y, x) in per_unit.items()}
    expected = ratio_test(summaries["control"], summaries["b"])
    comparison = results.variant("b").ctr.vs_control
    assert results.variant("b").clicks == sum(per_unit["b"][0])
    assert (comparison.difference, comparison.ci_low, comparison.ci_high, comparison.p_value) == pytest.approx(
        (expected.difference, expected.ci_low, expected.ci_high, expected.p_value), rel=1e-9
    )
    assert comparison.always_valid_p_value == pytest.approx(
        always_valid_ratio_test(summaries["control"], summaries["b"]).p_value, rel=1e-9
    )
    assert comparison.chance_to_beat_control == pytest.approx(
        ratio_chance_to_beat_control(summaries["control"], summaries["b"]), rel=1e-9
    )
    assert "delta method" in comparison.method
    # Not the per-list test, whose interval ignores that a customer's lists go together.
    t, c = summaries["b"], summaries["control"]
    per_list = proportion_test(int(c.sum_x), int(c.sum_y), int(t.sum_x), int(t.sum_y))
    assert comparison.ci_high - comparison.ci_low > 1.2 * (per_list.ci_high - per_list.ci_low)
    # Sized in customers, from the same per-customer variance.
    assert results.variant("b").sample_size_required == ratio_sample_size_per_variant(summaries["control"], 0.05)


def test_sample_ratio_mismatch_is_flagged(user: AbstractUser, items: list[int]) -> None:
    experiment, variants = _experiment(user, "srm", {"control": 0.5, "b": 0.5})
    customers = _customers("srm", 1000)
    Impression.objects.bulk_create(
        _impression(experiment, variants["control" if i < 900 else "b"], c, START, items[:3], f"srm-{i}")
        for i, c in enumerate(customers)
    )

    results = services.experiment_results(key="srm")

    assert results.srm_flagged
    assert results.srm_p_value < 1e-6
    assert results.warnings[0].startswith("Sample ratio mismatch")


def test_purchases_are_attributed_only_within_the_window(user: AbstractUser, items: list[int]) -> None:
    experiment, variants = _experiment(user, "window", {"control": 0.5, "b": 0.5}, primary="conversion_rate")
    shown, other = items[:3], items[5]
    c_in, c_late, c_other, c_before, c_request = _customers("win", 5)
    at = START + dt.timedelta(hours=1)
    req = f"win-{c_request.pk}"
    Impression.objects.bulk_create(
        _impression(experiment, variants["control"], c, at, shown, f"win-{c.pk}")
        for c in (c_in, c_late, c_other, c_before, c_request)
    )
    Interaction.objects.bulk_create(
        [
            _event(Interaction.Type.PURCHASE, c_in, shown[1], at + dt.timedelta(hours=23), value=30.0),  # counted
            _event(Interaction.Type.PURCHASE, c_late, shown[0], at + dt.timedelta(hours=25), value=50.0),  # too late
            _event(Interaction.Type.PURCHASE, c_other, other, at + dt.timedelta(hours=1), value=70.0),  # not shown
            _event(Interaction.Type.PURCHASE, c_before, shown[0], at - dt.timedelta(hours=1), value=90.0),  # before
            # Carrying the list's request id: attributed whatever the delay.
            _event(Interaction.Type.PURCHASE, c_request, other, at + dt.timedelta(hours=40), request_id=req, value=11),
            _event(Interaction.Type.ADD_TO_CART, c_request, other, at + dt.timedelta(hours=39), request_id=req),
        ]
    )  # fmt: skip

    control = services.experiment_results(key="window").variant("control")

    assert control.exposures == 5
    assert control.conversions == 2
    assert control.revenue == pytest.approx(41.0)
    assert control.add_to_carts == 1
    assert control.conversion_rate.value == pytest.approx(2 / 5)
    assert control.revenue_per_customer.value == pytest.approx(41.0 / 5)

    # The window is configurable: 26 hours takes in the purchase at 25 hours.
    Experiment.objects.filter(pk=experiment.pk).update(attribution_window_hours=26)
    control = services.experiment_results(key="window").variant("control")
    assert control.conversions == 3
    assert control.revenue == pytest.approx(91.0)


def test_holm_adjusts_p_values_with_three_variants(user: AbstractUser, items: list[int]) -> None:
    experiment, variants = _experiment(user, "holm", {"control": 0.4, "b": 0.3, "c": 0.3})
    rng = np.random.default_rng(11)
    rates = {"control": 0.10, "b": 0.125, "c": 0.11}
    counts = {"control": 1600, "b": 1200, "c": 1200}
    customers = _customers("holm", sum(counts.values()))
    impressions, clicks = [], []
    offset = 0
    for name, n in counts.items():
        for customer in customers[offset : offset + n]:
            for k in range(2):
                request_id = f"holm-{customer.pk}-{k}"
                impressions.append(_impression(experiment, variants[name], customer, START, items[:4], request_id))
                if rng.random() < rates[name]:
                    clicks.append(_event(Interaction.Type.CLICK, customer, items[0], START, request_id=request_id))
        offset += n
    Impression.objects.bulk_create(impressions)
    Interaction.objects.bulk_create(clicks)

    results = services.experiment_results(key="holm")

    b, c = results.variant("b").ctr.vs_control, results.variant("c").ctr.vs_control
    assert [b.p_value_holm, c.p_value_holm] == pytest.approx(holm_adjust([b.p_value, c.p_value]))
    assert b.p_value_holm >= b.p_value
    assert c.p_value_holm >= c.p_value
    assert max(b.p_value_holm - b.p_value, c.p_value_holm - c.p_value) > 0  # the adjustment bites
    assert not results.srm_flagged


def test_cuped_reduces_the_variance_of_revenue(user: AbstractUser, items: list[int]) -> None:
    experiment, variants = _experiment(user, "cuped", {"control": 0.5, "b": 0.5}, primary="revenue_per_customer")
    rng = np.random.default_rng(5)
    customers = _customers("cuped", 800)
    impressions, events = [], []
    for i, customer in enumerate(customers):
        name = "control" if i % 2 == 0 else "b"
        spend = float(rng.lognormal(mean=3.0, sigma=0.6))  # each customer's propensity to spend
        request_id = f"cuped-{customer.pk}"
        at = START + dt.timedelta(hours=2)
        impressions.append(_impression(experiment, variants[name], customer, at, items[:4], request_id))
        # Pre-experiment purchase (the covariate) and the in-experiment purchase, both driven by the propensity.
        before = START - dt.timedelta(days=10)
        events.append(
            _event(Interaction.Type.PURCHASE, customer, items[6], before, value=spend * float(rng.uniform(0.8, 1.2)))
        )
        lift = 1.05 if name == "b" else 1.0
        events.append(
            _event(
                Interaction.Type.PURCHASE, customer, items[0], at + dt.timedelta(minutes=30), request_id=request_id,
                value=spend * lift * float(rng.uniform(0.8, 1.2)),
            )
        )  # fmt: skip
    # Purchases older than the 30-day pre-period are not part of the covariate.
    events.append(_event(Interaction.Type.PURCHASE, customers[0], items[7], START - dt.timedelta(days=45), value=1e6))
    Impression.objects.bulk_create(impressions)
    Interaction.objects.bulk_create(events)

    results = services.experiment_results(key="cuped")

    b = results.variant("b")
    raw, adjusted = b.revenue_per_customer.vs_control, b.revenue_per_customer_cuped.vs_control
    assert results.cuped_variance_reduction > 0.5
    assert adjusted.ci_high - adjusted.ci_low < 0.8 * (raw.ci_high - raw.ci_low)
    assert adjusted.p_value < raw.p_value
    # Same estimand: the adjusted difference stays near the raw one (pre-period balanced by randomisation).
    assert adjusted.difference == pytest.approx(raw.difference, abs=2 * (raw.ci_high - raw.ci_low))


def test_guardrails_are_flagged_when_breached(user: AbstractUser, items: list[int]) -> None:
    experiment, variants = _experiment(
        user, "rails", {"control": 0.5, "b": 0.5}, guardrails={"coverage": 0.5, "latency_p95_ms": 50}
    )
    customers = _customers("rails", 2)
    Impression.objects.bulk_create(
        [
            _impression(experiment, variants["control"], customers[0], START, items[:8], "rails-1"),  # 8 of 12 items
            _impression(experiment, variants["b"], customers[1], START, items[:3], "rails-2"),  # 3 of 12
        ]
    )

    results = services.experiment_results(key="rails")

    coverage = {v.name: next(g for g in v.guardrails if g.name == "coverage") for v in results.variants}
    assert coverage["control"].value == pytest.approx(8 / 12)
    assert not coverage["control"].breached
    assert coverage["b"].value == pytest.approx(3 / 12)
    assert coverage["b"].breached
    latency = next(g for g in results.variant("b").guardrails if g.name == "latency_p95_ms")
    assert latency.value is None  # these lists were stored without a latency
    assert not latency.breached
    assert results.guardrails_breached
    assert any("coverage breached by b" in w for w in results.warnings)


def test_a_guardrail_with_nothing_shown_yet_is_not_measured_not_breached(user: AbstractUser, items: list[int]) -> None:
    """A fresh experiment read "Guardrail coverage breached by control: 0" before any list was shown (an eighth
    tester, 6 December)."""
    experiment, variants = _experiment(user, "fresh-rails", {"control": 0.5, "b": 0.5}, guardrails={"coverage": 0.01})

    results = services.experiment_results(key="fresh-rails")

    for variant in results.variants:
        coverage = next(g for g in variant.guardrails if g.name == "coverage")
        assert coverage.value is None
        assert not coverage.breached
    assert not results.guardrails_breached
    assert not any("breached" in w for w in results.warnings)
    # Lists served empty are measured: the alarm the guardrail is for.
    customer = _customers("fresh-rails", 1)[0]
    Impression.objects.bulk_create([_impression(experiment, variants["b"], customer, START, [], "fresh-rails-1")])
    results = services.experiment_results(key="fresh-rails")
    assert next(g for g in results.variant("b").guardrails if g.name == "coverage").breached


def test_latency_guardrail_uses_the_p95_serving_latency_logged_with_each_impression(
    user: AbstractUser, items: list[int]
) -> None:
    _experiment(user, "slow", {"control": 0.5, "b": 0.5}, guardrails={"latency_p95_ms": 50})
    rng = np.random.default_rng(4)
    latencies = {"control": rng.gamma(4.0, 5.0, size=200), "b": rng.gamma(4.0, 5.0, size=200) + 35.0}
    # Through serving's path: impression_log queues the record with the latency, the flush stores it.
    for name, values in latencies.items():
        for i, latency in enumerate(values):
            services.impression_log(
                request_id=f"slow-{name}-{i}", surface="home", customer_id=f"slow-{name}-{i % 40}", session_id="",
                assignment=services.Assignment("slow", name, VariantConfig()), item_pks=items[:3], model_version=None,
                latency_ms=float(latency),
            )  # fmt: skip
    services.impressions_flush()

    results = services.experiment_results(key="slow")

    rails = {v.name: next(g for g in v.guardrails if g.name == "latency_p95_ms") for v in results.variants}
    for name, values in latencies.items():
        # percentile_cont interpolates linearly, as numpy's default; records keep the latency to the microsecond.
        assert rails[name].value == pytest.approx(float(np.percentile(np.round(values, 3), 95)), abs=1e-6)
    assert rails["control"].value < 50
    assert not rails["control"].breached
    assert rails["b"].value > 50
    assert rails["b"].breached
    assert results.guardrails_breached
    assert any("latency_p95_ms breached by b" in w for w in results.warnings)
    assert not any("breached by control" in w for w in results.warnings)


def test_results_of_an_unknown_or_unstarted_experiment(user: AbstractUser) -> None:
    with pytest.raises(services.ExperimentNotFound):
        services.experiment_results(key="nope")
    services.experiment_create(
        key="draft", name="d", surface="home", variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)]
    )

    results = services.experiment_results(key="draft")

    assert [v.exposures for v in results.variants] == [0, 0]
    assert results.srm_p_value is None
    assert results.series == ()


def test_purchase_values_stored_before_the_value_rule_cannot_break_the_results(
    user: AbstractUser, items: list[int]
) -> None:
    """The events API refuses a value beyond ±1e9 (docs/reliability.md, "Hostile input"); rows stored before that
    rule (1e308, -1e308, NaN) are clipped to the same range where the results sum revenue, so they can neither
    overflow Postgres' float8 sums nor make a figure NaN."""
    experiment, variants = _experiment(user, "legacy", {"control": 0.5, "b": 0.5}, primary="revenue_per_customer")
    shown = items[:3]
    buyers = _customers("legacy", 5)
    at = START + dt.timedelta(hours=1)
    Impression.objects.bulk_create(
        _impression(experiment, variants["control"], c, at, shown, f"legacy-{c.pk}") for c in buyers
    )
    later = at + dt.timedelta(hours=2)
    Interaction.objects.bulk_create(
        _event(Interaction.Type.PURCHASE, c, shown[0], later, value=value)
        for c, value in zip(buyers, [1e308, 1e308, -1e308, float("nan"), None], strict=True)  # None: no value sent
    )

    results = services.experiment_results(key="legacy")
    control = results.variant("control")

    assert control.conversions == 5
    assert control.revenue == pytest.approx(1e9 + 1e9 - 1e9 + 0.0 + 0.0)
    assert all(np.isfinite([control.revenue, control.revenue_per_customer.value]))
    assert results.series  # the charts' rows, from the same attribution
    assert all(np.isfinite(p.primary_value or 0.0) for p in results.series)


@pytest.mark.parametrize("primary", ["ctr", "conversion_rate"])
def test_a_minimum_detectable_effect_too_small_to_size_leaves_the_size_unknown(
    user: AbstractUser, items: list[int], primary: str
) -> None:
    """1e-300 passed the database's "above 0" check and then divided by zero in the sizing (its square underflows):
    the results page and API were a 500. Entry now refuses it (0.001 to 10); a row stored before sizes to None."""
    with pytest.raises(services.ExperimentError, match="minimum detectable effect"):
        _experiment(user, f"tiny-{primary}-new", {"control": 0.5, "b": 0.5}, minimum_detectable_effect=1e-300)
    experiment, variants = _experiment(user, f"tiny-{primary}", {"control": 0.5, "b": 0.5}, primary=primary)
    Experiment.objects.filter(pk=experiment.pk).update(minimum_detectable_effect=1e-300)
    buyers = _customers(f"tiny-{primary}", 6)
    at = START + dt.timedelta(hours=1)
    Impression.objects.bulk_create(
        _impression(experiment, variants["control" if n % 2 else "b"], c, at, items[:3], f"tiny-{primary}-{c.pk}")
        for n, c in enumerate(buyers)
    )
    Interaction.objects.bulk_create(
        _event(kind, c, items[0], at + dt.timedelta(minutes=5), request_id=f"tiny-{primary}-{c.pk}", value=value)
        for c in buyers[:2]
        for kind, value in ((Interaction.Type.CLICK, None), (Interaction.Type.PURCHASE, 5.0))
    )

    control = services.experiment_results(key=f"tiny-{primary}").variant("control")

    assert control.exposures == 3
    assert control.sample_size_required is None


# --- a twelfth tester: are the numbers right, is the experiment sound (6 December) -----------------------------------


def _aa_totals(rng: np.random.Generator, variant_id: int, units: int) -> VariantTotals:
    """One arm of an A/A test, per unit as the GROUP BY sums it: lists shown (1-6), clicked lists with a per-customer
    propensity (clustered, as real clickers are), a 5% conversion, lognormal revenue of the converted."""
    lists = rng.integers(1, 7, size=units)
    clicks = rng.binomial(lists, rng.beta(1, 9, size=units))
    carted = rng.random(units) < 0.08
    converted = rng.random(units) < 0.05
    revenue = np.where(converted, rng.lognormal(3.0, 1.0, size=units), 0.0)
    return VariantTotals(
        variant_id=variant_id, exposures=units, impressions=int(lists.sum()), clicks=int(clicks.sum()),
        carted_units=int(carted.sum()), converted_units=int(converted.sum()), revenue=float(revenue.sum()),
        revenue_sd=float(revenue.std(ddof=1)), clicks_sq=float(clicks @ clicks), impressions_sq=float(lists @ lists),
        clicks_impressions=float(clicks @ lists),
    )  # fmt: skip


def _spec(arms: int) -> ExperimentSpec:
    return ExperimentSpec(
        id=1, key="aa", name="aa", surface="home", namespace=None, status="running", mode="ab",
        primary_metric="conversion_rate", minimum_detectable_effect=0.1, attribution_window_hours=24, start_at=START,
        end_at=None, guardrails={}, winner=None,
        variants=tuple(VariantInfo(i, f"v{i}", 1 / arms, i == 0) for i in range(arms)),
    )  # fmt: skip


def _aa_runs(arms: int, runs: int, units: int, seed: int) -> list[ExperimentResults]:
    rng = np.random.default_rng(seed)
    spec = _spec(arms)
    out = []
    for _ in range(runs):
        # Units split by a fair multinomial, as the hash splits them: the SRM check sees a true null too.
        sizes = rng.multinomial(units * arms, [1 / arms] * arms)
        totals = {i: _aa_totals(rng, i, int(n)) for i, n in enumerate(sizes)}
        out.append(
            results_build(
                spec=spec,
                totals=totals,
                daily=(),
                items_shown={},
                active_items=0,
                cuped=None,
                weight_history=(),
                latency_p95_ms=None,
                computed_at=START,
            )  # fmt: skip
        )
    return out


def test_an_aa_test_declares_a_difference_at_most_alpha_of_the_time() -> None:
    """1,000 simulated A/A tests of 2 x 2,000 customers through the results builder: every metric's p-value, interval
    colour and always-valid p-value reject the true null about 5% of the time or less; SRM about 0.1%; the chance to
    beat control is uniform (beyond 95% about 5% of the time)."""
    runs = _aa_runs(arms=2, runs=1000, units=2000, seed=12)
    for metric in METRICS:
        comparisons = [r.variant("v1").metric(metric).vs_control for r in runs]
        assert all(c is not None for c in comparisons)
        rejected = np.mean([c.p_value < 0.05 for c in comparisons])
        assert 0.03 <= rejected <= 0.07, (metric, rejected)
        assert np.mean([c.verdict != "" for c in comparisons]) <= 0.07, metric
        if metric != "revenue_per_customer":
            assert np.mean([c.always_valid_p_value < 0.05 for c in comparisons]) <= 0.05, metric
            assert 0.03 <= np.mean([c.chance_to_beat_control > 0.95 for c in comparisons]) <= 0.07, metric
    assert np.mean([r.srm_flagged for r in runs]) <= 0.005


def test_with_three_challengers_a_coloured_difference_is_holm_adjusted() -> None:
    """An A/A test with three identical challengers: before, the page coloured an interval green or red whenever it
    excluded 0, unadjusted, beside a Holm-adjusted p-value; one of the three was coloured in ~14% of runs. Now a
    difference is called better or worse only when the Holm-adjusted test agrees, at most 5% of runs, and the
    always-valid p-values are Holm-adjusted too."""
    runs = _aa_runs(arms=4, runs=500, units=2000, seed=1212)
    unadjusted = adjusted = 0
    for r in runs:
        comparisons = [v.conversion_rate.vs_control for v in r.variants if not v.is_control]
        unadjusted += any(c.ci_low > 0 or c.ci_high < 0 for c in comparisons)
        adjusted += any(c.verdict for c in comparisons)
    assert unadjusted / len(runs) > 0.09  # what the colour meant before: one chance per challenger
    assert adjusted / len(runs) <= 0.065
    last = [v.conversion_rate.vs_control for v in runs[-1].variants if not v.is_control]
    sequential = [stats.always_valid_proportion_test(
        runs[-1].variants[0].exposures, runs[-1].variants[0].conversions, v.exposures, v.conversions
    ).p_value for v in runs[-1].variants[1:]]  # fmt: skip
    assert [c.always_valid_p_value for c in last] == pytest.approx(holm_adjust(sequential))


def test_a_clear_winner_is_called_better_and_a_clear_loser_worse() -> None:
    spec = _spec(3)
    rng = np.random.default_rng(3)
    base = {i: _aa_totals(rng, i, 20_000) for i in range(3)}
    totals = {
        0: base[0],
        1: dataclasses.replace(base[1], converted_units=base[0].converted_units + 400),
        2: dataclasses.replace(base[2], converted_units=base[0].converted_units - 400),
    }
    results = results_build(
        spec=spec, totals=totals, daily=(), items_shown={}, active_items=0, cuped=None, weight_history=(),
        latency_p95_ms=None, computed_at=START,
    )  # fmt: skip
    assert results.variant("v1").conversion_rate.vs_control.verdict == "better"
    assert results.variant("v2").conversion_rate.vs_control.verdict == "worse"


def test_a_planted_effect_is_reported_as_an_independent_computation_finds_it(
    user: AbstractUser, items: list[int]
) -> None:
    """Conversion 6% vs 9% planted in 2 x ~800 customers with 1-3 lists each, purchases attributed by either rule (or
    both: counted once), decoys that must not count (an item not shown, after the window, before the list, an
    add-to-cart without the request id); the page's counts equal the simulator's own, and its statistics equal
    statsmodels' and scipy's on the per-customer values."""
    from scipy import stats as sps
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    experiment, variants = _experiment(user, "planted", {"control": 0.5, "b": 0.5}, primary="conversion_rate")
    rng = np.random.default_rng(1206)
    customers = _customers("planted", 1600)
    rate = {"control": 0.06, "b": 0.09}
    truth: dict[str, dict[str, list[float]]] = {
        name: {"converted": [], "carted": [], "revenue": [], "lists": [], "clicks": []} for name in rate
    }
    impressions, events = [], []
    for customer in customers:
        name = services.assign(surface="home", unit_id=customer.external_id).variant
        lists = int(rng.integers(1, 4))
        shown_lists = []
        clicked = 0
        for k in range(lists):
            at = START + dt.timedelta(hours=6 * k, minutes=int(rng.integers(0, 300)))
            shown = [int(pk) for pk in rng.choice(items[:8], size=4, replace=False)]
            request_id = f"pl-{customer.pk}-{k}"
            impressions.append(_impression(experiment, variants[name], customer, at, shown, request_id))
            shown_lists.append((at, shown, request_id))
            if rng.random() < 0.2:
                clicked += 1
                events.append(_event(Interaction.Type.CLICK, customer, shown[0], at, request_id=request_id))
        at, shown, request_id = shown_lists[0]
        converted = rng.random() < rate[name]
        revenue = 0.0
        if converted:
            rule = int(rng.integers(0, 3))
            value = float(np.round(rng.lognormal(3.0, 0.8), 2))
            revenue += value
            if rule == 0:  # the list's request id, two days later: any delay counts
                events.append(_event(Interaction.Type.PURCHASE, customer, shown[1], at + dt.timedelta(days=2),
                                     request_id=request_id, value=value))  # fmt: skip
            elif rule == 1:  # an item shown, within the window, no request id
                events.append(_event(Interaction.Type.PURCHASE, customer, shown[2], at + dt.timedelta(hours=20),
                                     value=value))  # fmt: skip
            else:  # both rules: once
                events.append(_event(Interaction.Type.PURCHASE, customer, shown[3], at + dt.timedelta(hours=1),
                                     request_id=request_id, value=value))  # fmt: skip
            if rng.random() < 0.3:  # a second attributed purchase: its revenue adds up, the customer counts once
                extra = float(np.round(rng.lognormal(3.0, 0.8), 2))
                revenue += extra
                events.append(_event(Interaction.Type.PURCHASE, customer, shown[0], at + dt.timedelta(hours=2),
                                     request_id=request_id, value=extra))  # fmt: skip
        carted = rng.random() < 0.1
        if carted:
            events.append(_event(Interaction.Type.ADD_TO_CART, customer, shown[0], at + dt.timedelta(minutes=3),
                                 request_id=request_id))  # fmt: skip
        # Decoys: none of these is attributed.
        events.append(_event(Interaction.Type.ADD_TO_CART, customer, shown[1], at + dt.timedelta(minutes=4)))
        not_shown = next(pk for pk in items if pk not in {p for _, s, _ in shown_lists for p in s})
        events.append(_event(Interaction.Type.PURCHASE, customer, not_shown, at + dt.timedelta(hours=1), value=99.0))
        last_at, last_shown, _ = shown_lists[-1]
        never_shown_again = [p for p in last_shown if all(p not in s for _, s, _ in shown_lists[:-1])]
        if never_shown_again:
            pk = never_shown_again[0]
            events.append(_event(Interaction.Type.PURCHASE, customer, pk, last_at + dt.timedelta(hours=25), value=99.0))
            events.append(_event(Interaction.Type.PURCHASE, customer, pk, START - dt.timedelta(hours=1), value=99.0))
        arm = truth[name]
        arm["converted"].append(float(converted))
        arm["carted"].append(float(carted))
        arm["revenue"].append(revenue)
        arm["lists"].append(float(lists))
        arm["clicks"].append(float(clicked))
    Impression.objects.bulk_create(impressions)
    Interaction.objects.bulk_create(events)

    results = services.experiment_results(key="planted")

    c, b = ({k: np.array(v) for k, v in truth[name].items()} for name in ("control", "b"))
    for name, arm in (("control", c), ("b", b)):
        shown = results.variant(name)
        assert shown.exposures == arm["lists"].size
        assert shown.impressions == arm["lists"].sum()
        assert shown.clicks == arm["clicks"].sum()
        assert shown.conversions == arm["converted"].sum()
        assert shown.add_to_carts == arm["carted"].sum()
        assert shown.revenue == pytest.approx(arm["revenue"].sum())
    n_c, n_b = c["lists"].size, b["lists"].size
    x_c, x_b = int(c["converted"].sum()), int(b["converted"].sum())

    conversion = results.variant("b").conversion_rate.vs_control
    _, p = proportions_ztest([x_b, x_c], [n_b, n_c])
    low, high = confint_proportions_2indep(x_b, n_b, x_c, n_c, method="wald", compare="diff")
    assert conversion.difference == pytest.approx(x_b / n_b - x_c / n_c)
    assert conversion.relative_lift == pytest.approx((x_b / n_b) / (x_c / n_c) - 1)
    assert conversion.p_value == pytest.approx(p, rel=1e-9)
    assert (conversion.ci_low, conversion.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert conversion.p_value < 0.05  # the planted 50% lift is found
    assert conversion.verdict == "better"
    draws = np.random.default_rng(0).beta(1 + np.array([[x_c], [x_b]]), 1 + np.array([[n_c - x_c], [n_b - x_b]]),
                                          size=(2, 400_000))  # fmt: skip
    assert conversion.chance_to_beat_control == pytest.approx(np.mean(draws[1] > draws[0]), abs=0.003)

    revenue = results.variant("b").revenue_per_customer.vs_control
    welch = sps.ttest_ind(b["revenue"], c["revenue"], equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert revenue.p_value == pytest.approx(welch.pvalue, rel=1e-6)
    assert (revenue.ci_low, revenue.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-6)

    # CTR: the delta method from the per-customer values, computed here from the linearised metric.
    ctr = results.variant("b").ctr.vs_control

    def linearised_variance(arm: dict[str, np.ndarray]) -> tuple[float, float]:
        r = arm["clicks"].sum() / arm["lists"].sum()
        z = (arm["clicks"] - r * arm["lists"]) / arm["lists"].mean()
        return r, z.var(ddof=1) / z.size

    (r_c, v_c), (r_b, v_b) = linearised_variance(c), linearised_variance(b)
    assert ctr.difference == pytest.approx(r_b - r_c)
    assert ctr.p_value == pytest.approx(2 * sps.norm.sf(abs(r_b - r_c) / np.sqrt(v_c + v_b)), rel=1e-6)

    expected = sps.chisquare([n_c, n_b], [(n_c + n_b) / 2] * 2)
    assert results.srm_p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_coverage_compares_arms_on_as_many_lists_each(user: AbstractUser) -> None:
    """Two arms serving the same policy (10 items drawn from 600), the control on 900 lists, b on 100 (a 90/10
    ramp-up, or a bandit's floored arm). Distinct items grow with the lists shown: b read 81% against the control's
    100% and alone breached a 90% coverage guardrail, for showing fewer lists (a twelfth tester, 6 December). Each
    arm is now measured on its first N lists, N the smallest arm's: the same policy reads the same."""
    pks = [item.pk for item in ItemFactory.create_batch(600)]
    experiment, variants = _experiment(user, "rails-equal", {"control": 0.9, "b": 0.1}, guardrails={"coverage": 0.9})
    rng = np.random.default_rng(600)
    customers = _customers("rails-equal", 1000)
    Impression.objects.bulk_create(
        _impression(
            experiment, variants["control" if i < 900 else "b"], customer, START + dt.timedelta(seconds=i),
            [int(pk) for pk in rng.choice(pks, size=10, replace=False)], f"rails-equal-{i}",
        )
        for i, customer in enumerate(customers)
    )  # fmt: skip

    results = services.experiment_results(key="rails-equal")

    coverage = {v.name: next(g for g in v.guardrails if g.name == "coverage") for v in results.variants}
    assert coverage["control"].value == pytest.approx(coverage["b"].value, abs=0.05)
    assert coverage["control"].breached == coverage["b"].breached


def test_the_page_says_when_an_arm_was_not_served_by_the_version_it_tests(user: AbstractUser, items: list[int]) -> None:
    """ "Version 12 against the active 11": b names version 12 and the control the active version. Lists b served
    while 12 could not be loaded came from 11 (they count as b's), and the control followed the activation of 12
    half-way through: the page compared 11 with 11, then 12 with 12, and said nothing (a twelfth tester, 6
    December). Each is now a warning naming the versions and their shares."""
    experiment = services.experiment_create(
        key="v12", name="v12", surface="home", primary_metric="ctr",
        variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"model_version": 12})],
    )  # fmt: skip
    experiment = services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    variants = {v.name: v for v in Variant.objects.filter(experiment=experiment)}
    customers = _customers("v12", 40)
    served = {"control": [11] * 10 + [12] * 10, "b": [12] * 15 + [11] * 5}
    Impression.objects.bulk_create(
        Impression(
            request_id=f"v12-{name}-{i}", served_at=experiment.start_at, surface="home",
            customer=customers[i + (20 if name == "b" else 0)], experiment=experiment, variant=variants[name],
            item_pks=items[:4], model_version=version,
        )
        for name, versions in served.items() for i, version in enumerate(versions)
    )  # fmt: skip

    warnings = services.experiment_results(key="v12").warnings

    assert any(w.startswith("b names model version 12, but 5 of its 20 lists (25%)") for w in warnings), warnings
    assert any(w.startswith("control serves the active model version, which changed") for w in warnings), warnings
    assert any("11 (50%), 12 (50%)" in w for w in warnings), warnings

    # Served as named: no warning.
    Impression.objects.filter(experiment=experiment, variant=variants["b"]).update(model_version=12)
    Impression.objects.filter(experiment=experiment, variant=variants["control"]).update(model_version=11)
    assert not any("model version" in w for w in services.experiment_results(key="v12").warnings)


def test_an_experiment_says_when_the_surface_default_changed_under_it(user: AbstractUser) -> None:
    """Two experiments share the home page in disjoint ranges of one namespace: A tests a diversity cap of 0.5, B a
    cap of 0.2 (the default is 0.3). Concluding A with its winner makes 0.5 the home default, and with it B's
    control: B compared 0.2 with 0.3, then with 0.5, and its page said nothing (a twelfth tester, 6 December)."""

    def start(key: str, cap: float, low: float, high: float) -> Experiment:
        experiment = services.experiment_create(
            key=key, name=key, surface="home", namespace=("home-tests", low, high),
            variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"diversity_cap": cap})],
        )  # fmt: skip
        return services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)

    start("ns-a", 0.5, 0.0, 0.5)
    start("ns-b", 0.2, 0.5, 1.0)
    unit = next(
        f"u{i}"
        for i in range(1000)
        if services.assign(surface="home", unit_id=f"u{i}").experiment_key == "ns-b"
        and services.assign(surface="home", unit_id=f"u{i}").variant == "control"
    )
    assert services.assign(surface="home", unit_id=unit).config.diversity_cap == pytest.approx(0.3)
    assert not any("default changed" in w for w in services.experiment_results(key="ns-b").warnings)

    services.experiment_conclude(experiment_id=Experiment.objects.get(key="ns-a").pk, winner="b", user_id=user.pk)
    services.assignment_cache_clear()

    assert services.assign(surface="home", unit_id=unit).config.diversity_cap == pytest.approx(0.5)  # B's control
    assert any("The home default changed on" in w for w in services.experiment_results(key="ns-b").warnings)
    # The experiment whose conclusion changed it ran before the change: no warning on its own page.
    assert not any("default changed" in w for w in services.experiment_results(key="ns-a").warnings)
