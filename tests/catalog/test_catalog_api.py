"""Catalog endpoints: PUT creates or replaces, GET reads, DELETE deactivates; bad input is a 400 per field."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from catalog.models import Customer, Item
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


def test_put_creates_then_updates_an_item(api: APIClient) -> None:
    body = {
        "title": "Red Mug", "category": "kitchen", "brand": "acme", "price": "7.50",
        "tags": ["red", "mug"], "attributes": {"colour": "red"},
    }  # fmt: skip
    created = api.put("/v1/items/sku-1", body, format="json")
    assert created.status_code == 201
    assert created.json()["category"] == "kitchen"
    assert created.json()["price"] == "7.50"
    updated = api.put("/v1/items/sku-1", body | {"price": "8.00", "in_stock": False}, format="json")
    assert updated.status_code == 200
    item = Item.objects.get(external_id="sku-1")
    assert (str(item.price), item.in_stock, item.category.external_id, item.tags) == (
        "8.00",
        False,
        "kitchen",
        ["red", "mug"],
    )


def test_get_item_and_404_as_json(api: APIClient, django_assert_num_queries) -> None:
    ItemFactory(external_id="sku-2", title="Blue Bowl")
    api.get("/v1/items/sku-2")  # warm the key cache
    with django_assert_num_queries(1):
        response = api.get("/v1/items/sku-2")
    assert response.json()["title"] == "Blue Bowl"
    missing = api.get("/v1/items/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "No item with id 'nope'."}


def test_delete_deactivates_and_keeps_the_row(api: APIClient) -> None:
    ItemFactory(external_id="sku-3")
    assert api.delete("/v1/items/sku-3").status_code == 204
    assert Item.objects.get(external_id="sku-3").active is False
    assert api.delete("/v1/items/never-was").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "x", "price": "-1"}, "price"),
        ({"title": "x", "price": "abc"}, "price"),
        ({"title": "x", "tags": "not-a-list"}, "tags"),
        ({"title": "x", "in_stock": "maybe"}, "in_stock"),
        ({"title": "x", "created_at": "yesterday"}, "created_at"),
        ({"title": "x" * 501}, "title"),
        ({"title": "x", "category": "c" * 101}, "category"),
    ],
)
def test_bad_item_input_is_400_per_field(api: APIClient, body: dict, field: str) -> None:
    response = api.put("/v1/items/sku-bad", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Item.objects.filter(external_id="sku-bad").exists()


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00Z", "1899-12-31T23:59:59Z", "9999-12-31T23:59:59Z"])
def test_an_item_dated_outside_the_years_import_items_takes_is_400(api: APIClient, created_at: str) -> None:
    """An eleventh tester: the API stored items dated in the year 1 or 9999 (the newest arrival for ever), which
    import_items refuses."""
    response = api.put("/v1/items/sku-old", {"title": "x", "created_at": created_at}, format="json")
    assert (response.status_code, response.json()) == (
        400, {"created_at": ["Must be between 1900 and 3000 (in UTC)."]}
    )  # fmt: skip
    earliest = {"title": "x", "created_at": "1900-01-01T00:00:00Z"}
    assert api.put("/v1/items/sku-old", earliest, format="json").status_code == 201


def test_malformed_json_is_400(api: APIClient) -> None:
    response = api.put("/v1/items/sku-x", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_too_long_item_id_is_400(api: APIClient) -> None:
    response = api.get("/v1/items/" + "a" * 101)
    assert response.status_code == 400
    assert "item_id" in response.json()


def test_customer_put_and_get(api: APIClient) -> None:
    created = api.put("/v1/customers/c-1", {"attributes": {"tier": "gold"}}, format="json")
    assert created.status_code == 201
    opted = api.put("/v1/customers/c-1", {"personalisation_opt_out": True}, format="json")
    assert opted.status_code == 200
    customer = Customer.objects.get(external_id="c-1")
    assert customer.attributes == {"tier": "gold"}
    assert customer.personalisation_opt_out is True
    assert api.get("/v1/customers/c-1").json()["personalisation_opt_out"] is True
    assert api.get("/v1/customers/c-2").status_code == 404
