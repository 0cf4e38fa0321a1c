"""After `import_events`, serving personalises from the imported history at once (issue 13 item 5): the command
brings the online state up to date itself, without a separate `rebuild_online_state`."""

from __future__ import annotations

import csv
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings
from rest_framework.test import APIClient

from events.models import Interaction
from experiments.models import SurfaceDefault
from experiments.services import assignment_cache_clear
from ranking import rules, services, serving
from ranking.artifacts import loader
from tests.worlds import SMALL_PARAMS, cluster_world

CLUSTERS = (("wool", "scarf"), ("ceramic", "mug"), ("garden", "seed"), ("silver", "ring"))
HEADER = ["event_id", "customer_id", "item_id", "type", "value", "occurred_at", "session_id"]


def _events_csv(path: Path) -> None:
    """The world's interactions as the generic import file, then gone from the database (the import brings them)."""
    rows = Interaction.objects.select_related("customer", "item").order_by("id")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for row in rows:
            writer.writerow([
                row.event_id, row.customer.external_id, row.item.external_id, "purchase", "",
                row.occurred_at.isoformat(), row.session_id,
            ])  # fmt: skip
    Interaction.objects.all().delete()


def _list(api: APIClient, customer: str) -> dict[str, Any]:
    serving.clear_caches()
    rules.reset()
    loader().reset()
    assignment_cache_clear()
    response = api.get("/v1/recommendations", {"customer_id": customer, "count": 5})
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.django_db
def test_import_then_recommend_is_personalised_without_a_separate_rebuild(tmp_path: Path, api: APIClient) -> None:
    world = cluster_world(clusters=CLUSTERS, per_cluster=12, seed=4, customers_per_cluster=12)
    path = tmp_path / "events.csv"
    _events_csv(path)
    # Score order without the category cap, so a personal list is visibly the customer's own cluster.
    SurfaceDefault.objects.create(surface="home", config={"diversity_cap": 1.0, "exploration_share": 0.0})
    with override_settings(ARTIFACT_ROOT=tmp_path / "artifacts"):
        out, err = StringIO(), StringIO()
        call_command("import_events", str(path), "--quiet", stdout=out, stderr=err)
        assert Interaction.objects.count() == len(world["customers"]) * 6
        assert "Bringing the online state up to date" in err.getvalue()
        services.model_train(params=SMALL_PARAMS, force=True)

        personal = 0
        customers = world["customers"][::6]
        for customer in customers:
            body = _list(api, customer.external_id)
            assert body["degraded"] is False
            bought = set(Interaction.objects.filter(customer=customer).values_list("item__external_id", flat=True))
            cluster = next(iter(bought)).split("-")[0]
            listed = [item["item_id"] for item in body["items"]]
            assert len(listed) == 5
            assert not bought & set(listed)  # their own purchases are known to serving: never listed again
            personal += all(item_id.split("-")[0] == cluster for item_id in listed)
        # Every sampled customer gets their own cluster's other items: the imported history is being served.
        assert personal == len(customers)


@pytest.mark.django_db
def test_import_without_rebuild_says_what_to_run(tmp_path: Path) -> None:
    cluster_world(clusters=CLUSTERS[:1], per_cluster=6, seed=1, customers_per_cluster=3)
    path = tmp_path / "events.csv"
    _events_csv(path)
    out, err = StringIO(), StringIO()
    call_command("import_events", str(path), "--quiet", "--no-rebuild", stdout=out, stderr=err)
    assert "run manage.py rebuild_online_state" in err.getvalue()
    assert "Bringing the online state" not in err.getvalue()
