"""No active model version (a new shop, or every version failed): the recommendation endpoints still answer with
the most interacted-with items, say so (``"degraded": true``) and count it."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from events.models import Interaction
from ranking import serving
from ranking.artifacts import loader
from ranking.models import ModelVersion
from tests.factories import CustomerFactory, InteractionFactory, ItemFactory

pytestmark = pytest.mark.django_db


def _no_model_count() -> float:
    return REGISTRY.get_sample_value("recsys_degraded_responses_total", {"reason": "no_model"}) or 0.0


@pytest.fixture
def shop() -> dict[str, Any]:
    """Six items; sku-0 bought by three customers, sku-1 by two, sku-2 by one; no model ever trained."""
    items = [ItemFactory(external_id=f"sku-{n}") for n in range(6)]
    for n in range(3):
        customer = CustomerFactory(external_id=f"c{n}")
        for item in items[: 3 - n]:
            InteractionFactory(customer=customer, item=item, type=Interaction.Type.PURCHASE)
    serving.clear_caches()
    loader().reset()
    return {"items": items}


def test_without_an_active_model_recommendations_are_popular_items_marked_degraded(
    api: APIClient, shop: dict[str, Any]
) -> None:
    assert not ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exists()
    before = _no_model_count()
    response = api.get("/v1/recommendations", {"customer_id": "newcomer", "count": 3})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["degraded"] is True
    assert body["model_version"] is None
    assert [item["item_id"] for item in body["items"]][:3] == ["sku-0", "sku-1", "sku-2"]
    assert _no_model_count() == before + 1

    similar = api.get("/v1/items/sku-0/similar", {"count": 3})
    assert similar.status_code == 200, similar.content
    assert similar.json()["degraded"] is True
