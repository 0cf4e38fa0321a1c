"""/metrics exposes every family the dashboards and alerts of docs/operations.md use: one test per family, each
making the thing happen (a recommendation request, an event, a task run) and then finding the family's name and
labels in the scraped text; and docs/operations.md names only what /metrics exposes, and documents every family
of ours in its table."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
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


# --- docs/operations.md against what /metrics exposes -----------------------------------------------------------

OPERATIONS = Path(settings.BASE_DIR) / "docs" / "operations.md"
# A metric name in the text, the alert rules, the queries and the dashboard: recsys_* (not the recording rules'
# recsys:*, not RECSYS_* variables) and django-prometheus' django_*; "django_http_*" names no metric.
_DOCUMENTED = re.compile(r"(?<![\w:/.])((?:recsys|django)_[a-z0-9_]*[a-z0-9])\b")
# The names a query can use, by the type a family's "# TYPE" line gives (prometheus_client names a counter's family
# with its "_total" there); a labelled family no process has recorded yet has that line and no sample.
_QUERYABLE = {"histogram": ("", "_bucket", "_count", "_sum"), "summary": ("", "_count", "_sum")}


def _exposed_names(text: str) -> tuple[set[str], set[str]]:
    """Every name a query on this scrape can use (a counter's ``..._total``, a histogram's family name and its
    ``_bucket``/``_count``/``_sum``, a gauge's name), and the family names (``_created`` series left out)."""
    families: set[str] = set()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if not name.endswith("_created"):
                families.add(name)
                names.update(name + suffix for suffix in _QUERYABLE.get(kind, ("",)))
    return names, families


def _table_families() -> set[str]:
    """The first column of the table under "What /metrics exposes"."""
    section = OPERATIONS.read_text().split("\n## What /metrics exposes\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.M))


@pytest.fixture
def exposed(refreshed: dict[str, Any]) -> tuple[set[str], set[str]]:
    """After a list, a click, the impressions' flush and the quality task (the gauges exist): the raw scrape."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    return _exposed_names(response.content.decode())


def test_every_metric_the_operations_doc_names_is_exposed(exposed: tuple[set[str], set[str]]) -> None:
    """A query, alert or panel on a name /metrics does not expose is silently empty (the runbook's
    django_http_responses_total_by_status_view_method, whose samples are ..._total, was)."""
    names, _ = exposed
    documented = set(_DOCUMENTED.findall(OPERATIONS.read_text()))
    assert len(documented) > 30
    assert sorted(documented - names) == []


def test_every_family_of_ours_is_in_the_operations_table(exposed: tuple[set[str], set[str]]) -> None:
    _, families = exposed
    table = _table_families()
    assert len(table) > 20
    assert sorted(name for name in families if name.startswith("recsys_") and name not in table) == []


def test_the_runbooks_http_query_finds_the_events_endpoint(api: APIClient, shop: list[Item]) -> None:
    """RecsysEventIngestionStopped's runbook: responses of POST /v1/events by status, under the labels it names."""

    def accepted() -> float:
        samples = _labelled(
            _scrape(), "django_http_responses_total_by_status_view_method", view="events", method="POST", status="202"
        )
        return sum(value for name, _, value in samples if name.endswith("_total"))

    before = accepted()
    event = {"customer_id": "c-2", "item_id": shop[0].external_id, "type": "view"}
    assert api.post("/v1/events", event, format="json").status_code == 202
    assert accepted() == before + 1
