"""quality.services on generated traffic: CTR and conversion per surface/experiment/variant from interactions that carry
an impression's request_id, catalog coverage, diversity, freshness, the latency p95 from Prometheus multi-process
files, the gauges the task publishes and the daily snapshot it upserts. Every expected figure is counted by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, values

from catalog.models import Category, Customer, Item
from events.models import Interaction
from experiments.models import Experiment, Impression, Variant
from kernel import redis_client
from kernel.metrics import QualityCollector
from quality import services as quality
from quality import tasks
from quality.models import QualitySnapshot
from ranking.models import ModelVersion

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2030, 5, 20, 12, 30, tzinfo=dt.UTC)
MIDNIGHT = dt.datetime(2030, 5, 20, tzinfo=dt.UTC)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@pytest.fixture(autouse=True)
def _no_multiproc_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


def _hours_ago(hours: float) -> dt.datetime:
    return NOW - dt.timedelta(hours=hours)


@pytest.fixture
def traffic() -> dict[str, Any]:
    """Twelve active items (A: a1-a4, d1-d3; B: b1-b4; c1 without a category) and an inactive x1 (A).

    Lists (request, surface, experiment/variant, items, age) and what followed them:
      r1 home  home-exp/control       a1 a2 a3 b1   1 h   click + purchase     share 3/4
      r2 home  home-exp/treat         a1 b1 b2 c1   2 h   click                share 2/4
      r3 home  home-exp/control       a4 b3         3 h   -                    share 1/2
      r8 home  home-exp/treat and     a2 b2         4 h   click                share 1/2 (one list, two rows)
               layer-exp/on
      r4 similar (no experiment)      b1 b2 b3 b4   5 h   purchase, no click   share 1
      r5 similar (no experiment)      x1 d1        23 h   -  (yesterday)       share 1
      r6 home  (no experiment)        d2 b4        30 h   click                outside 24 h, inside 7 d
      r7 home  (no experiment)        d3            8 d   -                    outside 7 d
    """
    a, b = Category.objects.create(external_id="a", name="A"), Category.objects.create(external_id="b", name="B")
    items = {
        name: Item.objects.create(external_id=name, title=name.upper(), category=category)
        for name, category in [
            *((f"a{n}", a) for n in range(1, 5)), *((f"d{n}", a) for n in range(1, 4)),
            *((f"b{n}", b) for n in range(1, 5)), ("c1", None),
        ]
    }  # fmt: skip
    items["x1"] = Item.objects.create(external_id="x1", title="X1", category=a, active=False)
    home = Experiment.objects.create(key="home-exp", name="Home", surface="home")
    control = Variant.objects.create(experiment=home, name="control", weight=0.5, is_control=True)
    treat = Variant.objects.create(experiment=home, name="treat", weight=0.5)
    layered = Experiment.objects.create(key="layer-exp", name="Layer", surface="home")
    on = Variant.objects.create(experiment=layered, name="on", weight=1.0, is_control=True)
    customer = Customer.objects.create(external_id="shopper")

    def served(request_id: str, surface: str, names: str, hours: float, *memberships: tuple[Any, Any]) -> None:
        for experiment, variant in memberships or [(None, None)]:
            Impression.objects.create(
                request_id=request_id, surface=surface, served_at=_hours_ago(hours), customer=customer,
                experiment=experiment, variant=variant, item_pks=[items[name].pk for name in names.split()],
            )  # fmt: skip

    served("r1", "home", "a1 a2 a3 b1", 1, (home, control))
    served("r2", "home", "a1 b1 b2 c1", 2, (home, treat))
    served("r3", "home", "a4 b3", 3, (home, control))
    served("r8", "home", "a2 b2", 4, (home, treat), (layered, on))
    served("r4", "similar", "b1 b2 b3 b4", 5)
    served("r5", "similar", "x1 d1", 23)
    served("r6", "home", "d2 b4", 30)
    served("r7", "home", "d3", 24 * 8)

    events = [
        ("r1", "a1", Interaction.Type.CLICK), ("r1", "a1", Interaction.Type.CLICK),  # two clicks: one clicked list
        ("r1", "a2", Interaction.Type.PURCHASE), ("r2", "b2", Interaction.Type.CLICK),
        ("r8", "a2", Interaction.Type.CLICK), ("r4", "b3", Interaction.Type.PURCHASE),
        ("r6", "d2", Interaction.Type.CLICK),
        ("r3", "a4", Interaction.Type.VIEW),  # a view is neither a click nor a conversion
        ("unknown-request", "a1", Interaction.Type.CLICK),  # no impression: attributed to nothing
        ("", "a3", Interaction.Type.PURCHASE),  # organic purchase
    ]  # fmt: skip
    Interaction.objects.bulk_create(
        Interaction(
            event_id=f"q{n}", customer=customer, item=items[item], type=type_, request_id=request_id,
            occurred_at=NOW - dt.timedelta(minutes=30), received_at=NOW - dt.timedelta(seconds=90 - n),
        )
        for n, (request_id, item, type_) in enumerate(events)
    )  # fmt: skip
    return {"items": items}


@pytest.fixture
def versions() -> None:
    ModelVersion.objects.create(
        name="v-active", created_at=_hours_ago(10), activated_at=_hours_ago(9), status=ModelVersion.Status.ACTIVE
    )
    ModelVersion.objects.create(name="v-rejected", created_at=_hours_ago(2), status=ModelVersion.Status.CANDIDATE)
    ModelVersion.objects.create(name="v-failed", created_at=_hours_ago(1), status=ModelVersion.Status.FAILED)


def _gauges() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return {
        family.name: {tuple(sorted(sample.labels.items())): sample.value for sample in family.samples}
        for family in QualityCollector().collect()
    }


def _key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_ctr_and_conversion_per_surface_experiment_and_variant(traffic: dict[str, Any]) -> None:
    outcomes = quality.quality_refresh(now=NOW).window.outcomes
    assert outcomes == {
        ("home", "home-exp", "control"): quality.Outcome(impressions=2, clicks=1, conversions=1),
        ("home", "home-exp", "treat"): quality.Outcome(impressions=2, clicks=2, conversions=0),
        ("home", "layer-exp", "on"): quality.Outcome(impressions=1, clicks=1, conversions=0),
        ("similar", "-", "-"): quality.Outcome(impressions=2, clicks=0, conversions=1),
        # r8 is one list in two experiments: once in its surface's total.
        ("home", "all", "all"): quality.Outcome(impressions=4, clicks=3, conversions=1),
        ("similar", "all", "all"): quality.Outcome(impressions=2, clicks=0, conversions=1),
        ("all", "all", "all"): quality.Outcome(impressions=6, clicks=3, conversions=2),
    }
    total = outcomes[("all", "all", "all")]
    assert total.ctr == pytest.approx(0.5)
    assert total.conversion_rate == pytest.approx(1 / 3)


def test_coverage_and_diversity(traffic: dict[str, Any]) -> None:
    report = quality.quality_refresh(now=NOW)
    window, today = report.window, report.today
    assert window.active_items == today.active_items == 12
    # 24 h: a1-a4, b1-b4, c1, d1 (x1 is inactive); today: without r5's d1; 7 d: plus r6's d2.
    assert window.items_shown == 10
    assert window.coverage == pytest.approx(10 / 12)
    assert today.coverage == pytest.approx(9 / 12)
    assert window.coverage_7d == pytest.approx(11 / 12)
    # Mean max-category share per list; c1 (no category) is a category of its own.
    assert window.max_category_share["home"] == pytest.approx((0.75 + 0.5 + 0.5 + 0.5) / 4)
    assert window.max_category_share["similar"] == pytest.approx(1.0)
    assert window.max_category_share["all"] == pytest.approx((0.75 + 0.5 + 0.5 + 0.5 + 1 + 1) / 6)
    assert today.max_category_share["all"] == pytest.approx((0.75 + 0.5 + 0.5 + 0.5 + 1) / 5)


def test_freshness_ages(traffic: dict[str, Any], versions: None) -> None:
    fresh = quality.quality_refresh(now=NOW).freshness
    assert fresh.model_trained == pytest.approx(10 * 3600)
    assert fresh.model_activated == pytest.approx(9 * 3600)
    assert fresh.last_training == pytest.approx(2 * 3600)  # a rejected candidate trained fine; a failure did not
    assert fresh.last_event == pytest.approx(90 - 9)


def test_the_refresh_publishes_every_gauge(traffic: dict[str, Any], versions: None) -> None:
    quality.quality_refresh(now=NOW)
    gauges = _gauges()
    assert gauges["recsys_recommendation_ctr"][_key(surface="all", experiment="all", variant="all")] == 0.5
    assert gauges["recsys_recommendation_ctr"][_key(surface="home", experiment="home-exp", variant="treat")] == 1.0
    assert gauges["recsys_recommendation_conversion_rate"][_key(surface="similar", experiment="-", variant="-")] == 0.5
    assert gauges["recsys_recommendation_impressions_24h"][_key(surface="home", experiment="all", variant="all")] == 4
    assert gauges["recsys_catalog_coverage"] == {
        _key(window="24h"): pytest.approx(10 / 12),
        _key(window="7d"): pytest.approx(11 / 12),
    }
    assert gauges["recsys_catalog_items_shown"] == {_key(window="24h"): 10, _key(window="7d"): 11}
    assert gauges["recsys_catalog_active_items"] == {(): 12}
    assert gauges["recsys_list_max_category_share_mean"][_key(surface="similar")] == 1.0
    assert gauges["recsys_model_version_age_seconds"] == {
        _key(since="trained"): 36_000,
        _key(since="activated"): 32_400,
    }
    assert gauges["recsys_model_last_training_age_seconds"] == {(): 7200}
    assert gauges["recsys_events_last_received_age_seconds"] == {(): 81}
    assert gauges["recsys_quality_computed_timestamp_seconds"] == {(): NOW.timestamp()}


def test_a_surface_that_stopped_serving_leaves_the_gauges(traffic: dict[str, Any]) -> None:
    quality.quality_refresh(now=NOW)
    later = NOW + dt.timedelta(hours=20)  # r4 and r5, the only "similar" lists, are now older than 24 h
    quality.quality_refresh(now=later)
    surfaces = {dict(labels)["surface"] for labels in _gauges()["recsys_recommendation_impressions_24h"]}
    assert surfaces == {"home", "all"}


def test_without_traffic_the_rates_are_absent_not_zero() -> None:
    Item.objects.create(external_id="lonely", title="Lonely")
    report = quality.quality_refresh(now=NOW)
    assert report.window.total == quality.Outcome()
    gauges = _gauges()
    assert gauges["recsys_recommendation_ctr"] == {}
    assert gauges["recsys_catalog_coverage"] == {_key(window="24h"): 0.0, _key(window="7d"): 0.0}
    assert gauges["recsys_model_version_age_seconds"] == {}
    snapshot = QualitySnapshot.objects.get(date=NOW.date())
    assert (snapshot.impressions, snapshot.ctr, snapshot.conversion_rate) == (0, None, None)
    assert snapshot.max_category_share is None


def test_the_daily_snapshot_is_upserted(traffic: dict[str, Any]) -> None:
    quality.quality_refresh(now=NOW)
    quality.quality_refresh(now=NOW + dt.timedelta(minutes=5))
    snapshot = QualitySnapshot.objects.get()
    assert snapshot.date == NOW.date()
    assert (snapshot.impressions, snapshot.clicks, snapshot.conversions) == (5, 3, 2)  # today: r1 r2 r3 r8 r4
    assert snapshot.ctr == pytest.approx(0.6)
    assert snapshot.conversion_rate == pytest.approx(0.4)
    assert snapshot.coverage_24h == pytest.approx(9 / 12)
    assert snapshot.coverage_7d == pytest.approx(11 / 12)
    assert snapshot.max_category_share == pytest.approx(3.25 / 5)
    assert snapshot.latency_p95_ms is None  # no PROMETHEUS_MULTIPROC_DIR
    assert snapshot.computed_at == NOW + dt.timedelta(minutes=5)
    home = next(row for row in snapshot.by_surface if row["surface"] == "home" and row["experiment"] == "all")
    assert (home["impressions"], home["clicks"], home["max_category_share"]) == (4, 3, pytest.approx(0.5625))


def test_the_seven_day_coverage_is_reused_within_the_hour(traffic: dict[str, Any]) -> None:
    quality.quality_refresh(now=NOW)
    Impression.objects.filter(request_id="r7").update(served_at=_hours_ago(48))  # d3 now inside the week
    assert quality.quality_refresh(now=NOW).window.items_shown_7d == 11  # cached
    redis_client.get().delete(quality.COVERAGE_7D_KEY)
    assert quality.quality_refresh(now=NOW).window.items_shown_7d == 12
    # A cached week below what the last 24 hours reached is stale (e.g. cached before the first lists): recomputed.
    redis_client.get().set(quality.COVERAGE_7D_KEY, 3)
    assert quality.quality_refresh(now=NOW).window.items_shown_7d == 12


def test_yesterday_is_recomputed_until_final(traffic: dict[str, Any]) -> None:
    # Yesterday's last run saw only r5 and r6 (clicked later) is on its day; after midnight it is recomputed.
    yesterday = NOW.date() - dt.timedelta(days=1)
    QualitySnapshot.objects.create(date=yesterday, impressions=1, computed_at=MIDNIGHT - dt.timedelta(minutes=5))
    after_midnight = MIDNIGHT + dt.timedelta(minutes=20)
    Impression.objects.filter(request_id="r6").update(served_at=MIDNIGHT - dt.timedelta(hours=2))
    report = quality.quality_refresh(now=after_midnight)
    assert report.finalised == [yesterday]
    row = QualitySnapshot.objects.get(date=yesterday)
    # Yesterday: r5 (13:30) and r6 (22:00, clicked); r7 is a week older.
    assert (row.impressions, row.clicks, row.conversions) == (2, 1, 0)
    assert row.coverage_24h == pytest.approx(3 / 12)  # d1, d2, b4
    assert quality.quality_refresh(now=MIDNIGHT + dt.timedelta(hours=1, minutes=5)).finalised == [yesterday]
    # Computed after the grace period: final.
    assert quality.quality_refresh(now=MIDNIGHT + dt.timedelta(hours=1, minutes=10)).finalised == []


def test_days_before_the_platform_ran_get_no_row(traffic: dict[str, Any]) -> None:
    quality.quality_refresh(now=MIDNIGHT + dt.timedelta(minutes=5))
    assert list(QualitySnapshot.objects.values_list("date", flat=True)) == [NOW.date()]


def test_the_task_computes_now_and_stores_a_snapshot() -> None:
    item = Item.objects.create(external_id="t1", title="T1")
    Item.objects.create(external_id="t2", title="T2")
    Impression.objects.create(request_id="t", surface="home", served_at=dt.datetime.now(dt.UTC), item_pks=[item.pk])
    summary = tasks.quality_refresh.apply().get()
    assert summary["impressions_24h"] == 1
    assert summary["coverage_24h"] == 0.5
    assert QualitySnapshot.objects.get().impressions in (0, 1)  # 0 only if the clock crossed midnight meanwhile
    assert _gauges()["recsys_catalog_coverage"][_key(window="24h")] == 0.5


# --- Latency p95 from the multi-process files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ({0.005: 90, 0.015: 90, 0.025: 100, float("inf"): 100}, 0.95, 0.02),  # interpolated inside (15, 25] ms
        ({0.01: 10, float("inf"): 10}, 0.5, 0.005),  # the first bucket starts at 0
        ({0.1: 5, float("inf"): 10}, 0.95, 0.1),  # beyond the last finite bound: that bound, as Prometheus does
        ({0.1: 0, float("inf"): 0}, 0.95, None),
        ({}, 0.95, None),
    ],
)
def test_bucket_quantile(buckets: dict[float, float], q: float, expected: float | None) -> None:
    result = quality.bucket_quantile(buckets, q)
    assert result == (pytest.approx(expected) if expected is not None else None)


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


def _observe_latencies(pid: int, seconds: list[float]) -> None:
    """Write observations the way a gunicorn worker does: a histogram in multi-process mode, its own mmap file."""
    previous = values.ValueClass
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid)
    try:
        histogram = Histogram(
            quality.LATENCY_METRIC, "latency", ["endpoint", "surface", "variant"], buckets=LATENCY_BUCKETS,
            registry=CollectorRegistry(),
        )  # fmt: skip
        for value in seconds:
            histogram.labels("recommendations", "home", "-").observe(value)
    finally:
        values.ValueClass = previous


def test_latency_buckets_are_summed_over_processes(multiproc_dir: Path) -> None:
    _observe_latencies(101, [0.004] * 50)
    _observe_latencies(102, [0.004] * 40 + [0.02] * 10)
    buckets = quality.latency_buckets_read()
    assert buckets is not None
    assert (buckets[0.005], buckets[0.015], buckets[0.025], buckets[float("inf")]) == (90, 90, 100, 100)
    assert quality.bucket_quantile(buckets, 0.95) == pytest.approx(0.02)


def test_the_snapshot_gets_todays_latency_p95_from_the_files(multiproc_dir: Path) -> None:
    _observe_latencies(101, [0.004] * 90 + [0.02] * 10)
    quality.quality_refresh(now=NOW)  # the first day: everything since the processes started
    assert QualitySnapshot.objects.get().latency_p95_ms == pytest.approx(20.0)
    # The next day's first run closes yesterday with its growth and starts today from there.
    tomorrow = NOW + dt.timedelta(days=1)
    QualitySnapshot.objects.filter(date=NOW.date()).update(computed_at=MIDNIGHT + dt.timedelta(hours=23))
    _observe_latencies(102, [0.2] * 100)
    quality.quality_refresh(now=tomorrow)
    yesterday, today = QualitySnapshot.objects.order_by("date")
    assert yesterday.latency_p95_ms == pytest.approx(235.0)  # 200 observations: p95 in (100, 250] ms
    assert today.latency_p95_ms is None  # nothing observed since the day's baseline
    _observe_latencies(103, [0.008] * 20)
    quality.quality_refresh(now=tomorrow + dt.timedelta(minutes=5))
    assert QualitySnapshot.objects.get(date=tomorrow.date()).latency_p95_ms == pytest.approx(9.875)
