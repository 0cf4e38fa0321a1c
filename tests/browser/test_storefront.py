"""A shopper in a real browser: pick a demo customer, open a recommendation, buy it, and see the home page
change at once; the click and the purchase reach the platform attributed to the list they came from."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from events.models import Interaction
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
