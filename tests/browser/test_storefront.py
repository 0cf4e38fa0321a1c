"""A shopper in a real browser: pick a demo customer, open a recommendation, buy it, and see the home page
change at once; the click and the purchase reach the platform attributed to the list they came from."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from events.models import Interaction
from ranking.serving import similar_items
from storefront import views as storefront
from storefront.views import ROW_COUNT
from tests.browser.support import customer_id, save_screenshot, wait

pytestmark = pytest.mark.browser


def _home_ids(driver: WebDriver) -> list[str]:
    wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#recommendations li.card")))
    return [
        card.get_attribute("data-item-id") or ""
        for card in driver.find_elements(By.CSS_SELECTOR, "#recommendations li.card")
    ]


def test_buying_a_recommendation_changes_the_home_page(
    page: WebDriver, live_server: Any, world: dict[str, Any]
) -> None:
    shopper = customer_id(0, 0)
    page.get(f"{live_server.url}/")
    assert page.find_element(By.TAG_NAME, "h1").text == "Welcome, visitor"
    assert _home_ids(page)  # an anonymous visitor gets a list too

    # Pick the customer in the header's picker.
    Select(page.find_element(By.ID, "customer-select")).select_by_value(shopper)
    page.find_element(By.ID, "customer-switch").click()
    wait(page).until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), f"customer {shopper}"))
    before = _home_ids(page)
    reasons = [chip.text for chip in page.find_elements(By.CSS_SELECTOR, "#recommendations .chip")]
    assert any(reason.startswith("Because you bought") for reason in reasons), reasons
    assert page.find_elements(By.CSS_SELECTOR, "[id^=because-you-viewed-] li.card")
    save_screenshot(page, "storefront-home")

    # Open the first recommendation: the item page sends the click and the view by itself.
    first = page.find_element(By.CSS_SELECTOR, "#recommendations li.card a.card-link")
    title = first.find_element(By.CLASS_NAME, "card-title").text
    first.click()
    wait(page).until(ec.text_to_be_present_in_element((By.ID, "product-title"), title))
    bought = page.find_element(By.ID, "product").get_attribute("data-item-id")
    assert bought == before[0]
    request_id = parse_qs(urlparse(page.current_url).query)["rid"][0]
    wait(page).until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-view-sent"))
    assert page.find_element(By.TAG_NAME, "body").get_attribute("data-view-sent") == "true"
    assert page.find_elements(By.CSS_SELECTOR, "#similar-items li.card")
    assert page.find_elements(By.CSS_SELECTOR, "#frequently-bought-together li.card")
    save_screenshot(page, "storefront-item")

    attributed = Interaction.objects.filter(
        request_id=request_id, customer__external_id=shopper, item__external_id=bought
    )
    page.find_element(By.ID, "add-to-cart").click()
    wait(page).until(ec.text_to_be_present_in_element((By.ID, "event-status"), "Added to your cart."))
    assert attributed.filter(type=Interaction.Type.ADD_TO_CART).count() == 1

    page.find_element(By.ID, "buy").click()
    wait(page).until(ec.text_to_be_present_in_element((By.ID, "event-status"), "purchase is recorded"))
    assert sorted(attributed.values_list("type", flat=True)) == [
        Interaction.Type.VIEW, Interaction.Type.CLICK, Interaction.Type.ADD_TO_CART, Interaction.Type.PURCHASE,
    ]  # fmt: skip

    # Home again: the bought item is gone and the list has moved on.
    page.find_element(By.ID, "nav-home").click()
    after = _home_ids(page)
    assert bought not in after
    assert after != before


def _similar(item_id: str) -> list[dict[str, Any]]:
    return [asdict(entry) for entry in similar_items(item_id=item_id, count=ROW_COUNT, log_impression=False).items]


def test_not_interested_takes_an_item_off_the_page_and_out_of_the_next_lists(
    page: WebDriver, live_server: Any, world: dict[str, Any]
) -> None:
    """The demo storefront had no "not interested" control (the API's dismiss event worked, a twelfth-round
    review noted it missing): each card now has one, which sends the dismiss event attributed to the card's list,
    takes the card off the page, and the item stays out of the lists that follow."""
    shopper = customer_id(1, 1)  # bought 5 of their shelf's 12 items: similar items are left to show
    page.get(f"{live_server.url}/")
    page.add_cookie({"name": storefront.CUSTOMER_COOKIE, "value": shopper, "path": "/"})
    page.get(f"{live_server.url}/")
    wait(page).until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), f"customer {shopper}"))
    before = _home_ids(page)
    request_id = page.find_element(By.CSS_SELECTOR, "#recommendations ol.cards").get_attribute("data-request-id")
    card = page.find_element(By.CSS_SELECTOR, "#recommendations li.card")
    dismissed = card.get_attribute("data-item-id") or ""
    title = card.find_element(By.CLASS_NAME, "card-title").text
    card.find_element(By.CSS_SELECTOR, "button.card-dismiss").click()
    wait(page).until(ec.text_to_be_present_in_element((By.ID, "event-status"), f"You will not see “{title}” again."))
    assert dismissed not in _home_ids(page)  # off the page at once, without a reload
    assert page.current_url.startswith(f"{live_server.url}/")  # the press did not open the item
    assert "/items/" not in page.current_url
    stored = Interaction.objects.get(type=Interaction.Type.DISMISS, customer__external_id=shopper)
    assert stored.item.external_id == dismissed
    assert stored.request_id == request_id

    page.refresh()
    after = _home_ids(page)
    assert dismissed not in after
    assert after != before
    assert dismissed not in [
        card.get_attribute("data-item-id")
        for card in page.find_elements(By.CSS_SELECTOR, "[id^=because-you-viewed-] li.card")
    ]
    # Nor among the similar items of an item page like it (the page's similar widget, which knows the shopper).
    neighbour = next(
        item.external_id
        for item in world["items"]
        if item != stored.item and dismissed in [entry["item_id"] for entry in _similar(item.external_id)]
    )  # an item whose similar items (knowing no shopper) include the dismissed one
    page.get(f"{live_server.url}/items/{neighbour}")
    wait(page).until(ec.presence_of_element_located((By.ID, "product-title")))
    similar = [
        card.get_attribute("data-item-id") for card in page.find_elements(By.CSS_SELECTOR, "#similar-items li.card")
    ]
    assert similar
    assert dismissed not in similar


def test_an_unavailable_item_cannot_be_bought_on_its_page(
    page: WebDriver, live_server: Any, world: dict[str, Any]
) -> None:
    """The buy buttons stayed on for an item out of stock or switched off (an eighth tester, 6 December)."""
    item = world["items"][0]
    item.in_stock = False
    item.save(update_fields=["in_stock"])
    page.get(f"{live_server.url}/items/{item.external_id}")
    wait(page).until(ec.presence_of_element_located((By.ID, "product-title")))
    assert page.find_element(By.ID, "availability").text == "Currently unavailable"
    for button in ("add-to-cart", "buy"):
        assert not page.find_element(By.ID, button).is_enabled()
        assert page.find_element(By.ID, button).get_attribute("data-event") is None  # nothing to send
    # An available item's page keeps them.
    page.get(f"{live_server.url}/items/{world['items'][1].external_id}")
    wait(page).until(ec.presence_of_element_located((By.ID, "product-title")))
    assert page.find_element(By.ID, "buy").is_enabled()
