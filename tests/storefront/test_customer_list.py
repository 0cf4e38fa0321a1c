"""GET /v1/customers: the most active customers first (what the storefront's and the admin's pickers offer), every
customer by id, bounded pages that link the next one, the catalog scope, and its place in the OpenAPI schema."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from catalog.models import Customer
from events import selectors as event_selectors
from events.models import Interaction
from storefront import customer_list
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db
AT = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


@pytest.fixture
def shoppers() -> list[Customer]:
    """c0 buys 3 times, c1 views 4 times, c2 buys once, c3 never does anything."""
    item = ItemFactory(external_id="cl-item")
    customers = [Customer.objects.create(external_id=f"c{n}") for n in range(4)]
    plan = {0: [Interaction.Type.PURCHASE] * 3, 1: [Interaction.Type.VIEW] * 4, 2: [Interaction.Type.PURCHASE]}
    Interaction.objects.bulk_create(
        Interaction(event_id=f"cl-{n}-{k}", customer=customers[n], item=item, type=type_, occurred_at=AT)
        for n, types in plan.items() for k, type_ in enumerate(types)
    )  # fmt: skip
    return customers


def test_most_active_first_with_counts(api: APIClient, shoppers: list[Customer]) -> None:
    response = api.get("/v1/customers", {"ordering": "-activity", "limit": 10})
    assert response.status_code == 200
    assert response.json() == {
        "results": [
            {"customer_id": "c1", "interactions": 4, "purchases": 0},
            {"customer_id": "c0", "interactions": 3, "purchases": 3},
            {"customer_id": "c2", "interactions": 1, "purchases": 1},
        ],
        "next": None,
    }


def test_pages_link_the_next_one(api: APIClient, shoppers: list[Customer]) -> None:
    first = api.get("/v1/customers", {"limit": 2}).json()
    assert [row["customer_id"] for row in first["results"]] == ["c1", "c0"]
    assert first["next"].endswith("/v1/customers?ordering=-activity&limit=2&offset=2")
    second = api.get(first["next"]).json()
    assert [row["customer_id"] for row in second["results"]] == ["c2"]
    assert second["next"] is None


def test_by_id_lists_every_customer_even_without_activity(api: APIClient, shoppers: list[Customer]) -> None:
    rows = api.get("/v1/customers", {"ordering": "customer_id"}).json()["results"]
    assert [(row["customer_id"], row["interactions"]) for row in rows] == [("c0", 3), ("c1", 4), ("c2", 1), ("c3", 0)]


def test_activity_counts_only_the_latest_window(
    api: APIClient, shoppers: list[Customer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stored in id order c0 x3, c1 x4, c2 x1: the latest two are one of c1's views and c2's purchase.
    monkeypatch.setattr(event_selectors, "ACTIVITY_WINDOW", 2)
    rows = customer_list.customer_activity_list(limit=10)
    assert [(row.customer_id, row.interactions, row.purchases) for row in rows] == [("c2", 1, 1), ("c1", 1, 0)]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"offset": -1}, "offset"), ({"offset": 10_001}, "offset"),
     ({"ordering": "purchases"}, "ordering"), ({"limit": "x"}, "limit")],
)  # fmt: skip
def test_bad_parameters_are_400_per_field(api: APIClient, params: dict[str, Any], field: str) -> None:
    response = api.get("/v1/customers", params)
    assert response.status_code == 400
    assert field in response.json()


def test_needs_the_catalog_scope(make_api_client: Callable[..., APIClient]) -> None:
    assert make_api_client("recommend").get("/v1/customers").status_code == 403
    assert make_api_client("catalog").get("/v1/customers").status_code == 200
    assert APIClient().get("/v1/customers").status_code == 401


def test_one_query_per_page(api: APIClient, shoppers: list[Customer], django_assert_max_num_queries: Any) -> None:
    api.get("/v1/customers")  # warm the key cache
    with django_assert_max_num_queries(1):
        assert api.get("/v1/customers", {"limit": 100}).status_code == 200


def test_in_the_openapi_schema(api: APIClient) -> None:
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/v1/customers"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"ordering", "limit", "offset"}
