"""/metrics exposes every family the dashboards and alerts of docs/operations.md use: one test per family, each
making the thing happen (a recommendation request, an event, a task run) and then finding the family's name and
labels in the scraped text."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from catalog.models import Category, Item
from events.models import Interaction
from experiments.services import impressions_flush
from quality import tasks
from ranking import serving
from ranking.artifacts import loader
from ranking.models import ModelVersion

pytestmark = pytest.mark.django_db


def _scrape() -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Family name -> its samples (sample name, labels, value), parsed from GET /metrics."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    return {
        family.name: [(s.name, dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(response.content.decode())
    }


def _labelled(families: dict[str, Any], name: str, **labels: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of ``name`` whose labels include ``labels``."""
    assert name in families, f"{name} is not in /metrics"
    return [sample for sample in families[name] if labels.items() <= sample[1].items()]


def _count(families: dict[str, Any], name: str, **labels: str) -> float:
    """How many times a counter was incremented or a histogram observed, over the series matching ``labels``; the
    process's counters outlive a test, so tests compare this before and after."""
    if name not in families:
        return 0.0
    wanted = (f"{name}_total", f"{name}_count")
    return sum(value for sample, _, value in _labelled(families, name, **labels) if sample in wanted)


@pytest.fixture
def shop() -> list[Item]:
    """A few items with purchases: without a trained model serving falls back to the most bought ones."""
    serving.clear_caches()
    loader().reset()  # no model left loaded by an earlier test: these lists are the degraded fallback
    category = Category.objects.create(external_id="mugs", name="Mugs")
    items = [Item.objects.create(external_id=f"m{n}", title=f"Mug {n}", category=category) for n in range(6)]
    Interaction.objects.bulk_create(
        Interaction(event_id=f"p{n}", session_id="s", item=item, type=Interaction.Type.PURCHASE,
                    occurred_at=dt.datetime.now(dt.UTC))
        for n, item in enumerate(items)
    )  # fmt: skip
    return items


@pytest.fixture
def served(api: APIClient, shop: list[Item]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two identical requests (a miss, then a cache hit) and a similar-items request; the scrapes before and after."""
    before = _scrape()
    first = api.get("/v1/recommendations", {"customer_id": "metrics-shopper", "count": 4})
    assert first.status_code == 200, first.content
    assert first.json()["items"]
    assert api.get("/v1/recommendations", {"customer_id": "metrics-shopper", "count": 4}).status_code == 200
    assert api.get(f"/v1/items/{shop[0].external_id}/similar").status_code == 200
    return before, _scrape()


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("recsys_recommendation_requests", {"endpoint": "recommendations", "surface": "home", "variant": "-",
                                            "cache": "miss"}),
        ("recsys_recommendation_requests", {"endpoint": "similar", "surface": "similar", "variant": "-"}),
        ("recsys_recommendation_latency_seconds", {"endpoint": "recommendations", "surface": "home", "variant": "-"}),
        ("recsys_pipeline_stage_seconds", {"stage": "retrieval"}),
        ("recsys_pipeline_stage_seconds", {"stage": "ranking"}),
        ("recsys_pipeline_stage_seconds", {"stage": "rerank"}),
        ("recsys_recommendation_cache", {"result": "miss"}),
        ("recsys_recommendation_cache", {"result": "l1_hit"}),
        ("recsys_degraded_responses", {"reason": "no_model"}),
        ("recsys_list_max_category_share", {}),
    ],
)  # fmt: skip
def test_request_families(served: tuple[dict[str, Any], dict[str, Any]], name: str, labels: dict[str, str]) -> None:
    before, after = served
    assert _labelled(after, name, **labels), f"no {name} sample with {labels}"
    assert _count(after, name, **labels) > _count(before, name, **labels)


def test_latency_histogram_has_buckets_for_the_p99_query(served: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, after = served
    buckets = [s for s in _labelled(after, "recsys_recommendation_latency_seconds") if s[0].endswith("_bucket")]
    assert {"0.1", "+Inf"} <= {labels["le"] for _, labels, _ in buckets}  # the 100 ms alert threshold is a bound


def test_events_ingested_by_type(api: APIClient, shop: list[Item]) -> None:
    before = _count(_scrape(), "recsys_events_ingested", type="add_to_cart")
    response = api.post(
        "/v1/events", {"customer_id": "c-1", "item_id": shop[0].external_id, "type": "add_to_cart"}, format="json"
    )
    assert response.status_code == 202, response.content
    assert _count(_scrape(), "recsys_events_ingested", type="add_to_cart") == before + 1


def test_celery_task_outcomes_and_durations() -> None:
    task = {"task": "recsys.tasks.quality_refresh"}
    before = _scrape()
    tasks.quality_refresh.apply().get()
    after = _scrape()
    assert (
        _count(after, "recsys_celery_tasks", **task, state="success")
        == _count(before, "recsys_celery_tasks", **task, state="success") + 1
    )
    assert (
        _count(after, "recsys_celery_task_seconds", **task) == _count(before, "recsys_celery_task_seconds", **task) + 1
    )


def test_celery_task_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(tasks.quality, "quality_refresh", broken)
    task = {"task": "recsys.tasks.quality_refresh", "state": "failure"}
    before = _count(_scrape(), "recsys_celery_tasks", **task)
    assert tasks.quality_refresh.apply().failed()
    assert _count(_scrape(), "recsys_celery_tasks", **task) == before + 1


@pytest.fixture
def refreshed(api: APIClient, shop: list[Item]) -> dict[str, Any]:
    """The attributed-outcome loop end to end: a served list is flushed to Postgres, the shopper clicks an item of
    it with its request_id, the quality task runs, /metrics is scraped."""
    body = api.get("/v1/recommendations", {"customer_id": "metrics-shopper", "count": 4}).json()
    assert impressions_flush().rows_stored == 1
    click = {"customer_id": "metrics-shopper", "item_id": body["items"][0]["item_id"], "type": "click",
             "request_id": body["request_id"]}  # fmt: skip
    assert api.post("/v1/events", click, format="json").status_code == 202
    # Registered after serving (it has no artifacts to load): only its ages are measured.
    ModelVersion.objects.create(
        name="v-metrics", status=ModelVersion.Status.ACTIVE, activated_at=dt.datetime.now(dt.UTC)
    )
    tasks.quality_refresh.apply().get()
    return _scrape()


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("recsys_recommendation_ctr", {"surface": "home", "experiment": "-", "variant": "-"}),
        ("recsys_recommendation_ctr", {"surface": "all", "experiment": "all", "variant": "all"}),
        ("recsys_recommendation_conversion_rate", {"surface": "home", "experiment": "-", "variant": "-"}),
        ("recsys_recommendation_impressions_24h", {"surface": "home", "experiment": "all", "variant": "all"}),
        ("recsys_catalog_coverage", {"window": "24h"}),
        ("recsys_catalog_coverage", {"window": "7d"}),
        ("recsys_catalog_items_shown", {"window": "24h"}),
        ("recsys_catalog_active_items", {}),
        ("recsys_list_max_category_share_mean", {"surface": "home"}),
        ("recsys_model_version_age_seconds", {"since": "trained"}),
        ("recsys_model_version_age_seconds", {"since": "activated"}),
        ("recsys_model_last_training_age_seconds", {}),
        ("recsys_events_last_received_age_seconds", {}),
        ("recsys_quality_computed_timestamp_seconds", {}),
    ],
)
def test_quality_families(refreshed: dict[str, Any], name: str, labels: dict[str, str]) -> None:
    assert _labelled(refreshed, name, **labels), f"no {name} sample with {labels}"


def test_the_click_makes_the_ctr_one(refreshed: dict[str, Any]) -> None:
    ((_, _, ctr),) = _labelled(refreshed, "recsys_recommendation_ctr", surface="home", experiment="-", variant="-")
    assert ctr == 1.0
