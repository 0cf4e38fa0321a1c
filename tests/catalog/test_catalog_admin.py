"""The catalog and interaction admin pages render with bounded queries (no N+1, no full counts)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.factories import InteractionFactory, ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> Client:
    user = get_user_model().objects.create_superuser("merch", "m@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "url",
    ["/admin/catalog/item/", "/admin/catalog/customer/", "/admin/events/interaction/", "/admin/catalog/category/"],
)
def test_list_pages_use_a_fixed_number_of_queries(staff: Client, url: str, django_assert_max_num_queries) -> None:
    for n in range(30):
        InteractionFactory(item=ItemFactory(external_id=f"sku-{n}"))
    staff.get(url)  # warm the session
    with django_assert_max_num_queries(12):
        response = staff.get(url)
    assert response.status_code == 200


def test_item_search_by_title_and_exact_id(staff: Client) -> None:
    ItemFactory(external_id="85123A", title="White Hanging Heart")
    ItemFactory(external_id="22423", title="Regency Cakestand")
    by_title = staff.get("/admin/catalog/item/", {"q": "hanging"})
    assert b"85123A" in by_title.content
    assert b"22423" not in by_title.content
    assert b"Regency" in staff.get("/admin/catalog/item/", {"q": "22423"}).content


def test_interaction_search_by_customer_id(staff: Client) -> None:
    event = InteractionFactory()
    other = InteractionFactory()
    response = staff.get("/admin/events/interaction/", {"q": event.customer.external_id})
    assert str(event.item).encode() in response.content
    assert str(other.item).encode() not in response.content


def test_the_item_form_applies_the_apis_display_text_rule(staff: Client) -> None:
    item = ItemFactory(external_id="sku-t", title="Plain")
    url = f"/admin/catalog/item/{item.pk}/change/"
    form = {
        "external_id": "sku-t", "title": "\x1b[31mRed", "description": "", "price": "", "in_stock": "on",
        "active": "on", "tags": "", "attributes": "{}", "created_at_0": "2026-01-01", "created_at_1": "10:00:00",
    }  # fmt: skip
    response = staff.post(url, form)
    assert response.status_code == 200  # the form again, with the error
    assert b"Contains control characters." in response.content
    item.refresh_from_db()
    assert item.title == "Plain"
    form["title"] = "\u05e1\u05e4\u05e8 \u200fok"  # right-to-left text with a direction mark is text
    assert staff.post(url, form).status_code == 302
    item.refresh_from_db()
    assert item.title == "\u05e1\u05e4\u05e8 \u200fok"
