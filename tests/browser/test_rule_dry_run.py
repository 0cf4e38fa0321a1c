"""A merchandiser in a real browser tries a rule before it goes live: create a draft boost of the garden shelf in
the rule form, open "Try on recent traffic", start the run (a real Celery worker re-serves the logged requests),
watch the page poll until the tables appear, then publish the draft and see serving use it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from catalog.models import Category
from experiments.services import impressions_flush
from ranking import rules, serving
from ranking.models import BusinessRule
from tests.browser.support import SHELVES, customer_id, save_screenshot, wait

pytestmark = pytest.mark.browser

GARDEN = 2  # the shelf every simulated shopper is keen on, whatever they buy


def _traffic(make_api_client: Any) -> int:
    """Home pages for every customer through the public API; shoppers click garden items far more often than
    others (clicks carry the list's request id). Impressions flushed as the beat task does. Lists served."""
    api = make_api_client("recommend", "events")
    rng = np.random.default_rng(5)
    served = 0
    for shelf in range(len(SHELVES)):
        for n in range(6):
            customer = customer_id(shelf, n)
            body = api.get("/v1/recommendations", {"customer_id": customer, "count": 8}).json()
            served += 1
            for position, item in enumerate(body["items"], start=1):
                liked = item["item_id"].startswith(f"2{GARDEN}")
                if rng.random() < 1 / np.log2(position + 1) and rng.random() < (0.5 if liked else 0.05):
                    event = {"customer_id": customer, "item_id": item["item_id"], "type": "click",
                             "request_id": body["request_id"]}  # fmt: skip
                    assert api.post("/v1/events", event, format="json").status_code == 202
    assert impressions_flush().rows_stored == served
    return served


def test_a_draft_rule_is_tried_on_recent_traffic_then_published(
    page: Any, live_server: Any, world: dict[str, Any], celery_worker: object, make_api_client: Any
) -> None:
    served = _traffic(make_api_client)
    get_user_model().objects.create_user("merchandiser", password="try-it-first", is_staff=True, is_superuser=True)
    garden = Category.objects.get(external_id=SHELVES[GARDEN][0])

    page.get(f"{live_server.url}/admin/")
    page.find_element(By.ID, "id_username").send_keys("merchandiser")
    page.find_element(By.ID, "id_password").send_keys("try-it-first")
    page.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(page).until(ec.presence_of_element_located((By.ID, "user-tools")))

    # A new rule: a draft unless the merchandiser says otherwise.
    page.get(f"{live_server.url}/admin/ranking/businessrule/add/")
    assert Select(page.find_element(By.ID, "id_status")).first_selected_option.get_attribute("value") == "draft"
    page.find_element(By.ID, "id_name").send_keys("Garden week")
    Select(page.find_element(By.ID, "id_kind")).select_by_value("boost")
    Select(page.find_element(By.ID, "id_target")).select_by_value("category")
    page.find_element(By.CSS_SELECTOR, "#id_category + .select2 .select2-selection").click()
    search = wait(page).until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".select2-search__field")))
    search.send_keys(garden.name.split()[0])
    option = (By.XPATH, f"//li[contains(@class, 'select2-results__option') and contains(., '{garden.name}')]")
    wait(page).until(ec.element_to_be_clickable(option)).click()
    weight = page.find_element(By.ID, "id_weight")
    weight.clear()
    weight.send_keys("1")
    page.find_element(By.NAME, "_continue").click()
    wait(page).until(ec.presence_of_element_located((By.ID, "draft-note")))
    rule = BusinessRule.objects.get(name="Garden week")
    assert (rule.status, rule.kind, rule.category_id, rule.weight) == ("draft", "boost", garden.pk, 1.0)
    rules.reset()
    assert not rules.published_rules()  # serving ignores it

    # Try it: the page polls the run until its tables appear.
    page.find_element(By.ID, "dry-run-link").click()
    wait(page).until(ec.presence_of_element_located((By.ID, "dry-run-form")))
    days = page.find_element(By.ID, "days")
    days.clear()
    days.send_keys("1")
    page.find_element(By.ID, "dry-run-submit").click()
    wait(page).until(ec.presence_of_element_located((By.ID, "dry-run-progress")))
    tables = wait(page, 120).until(ec.visibility_of_element_located((By.ID, "dry-run-tables")))
    headline = page.find_element(By.ID, "lists-changed").text
    assert f" of {served}" in headline
    changed = int(headline.split("Lists changed: ", 1)[1].split(" ", 1)[0])
    assert 0 < changed <= served
    categories = {
        row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[1:]
        for row in page.find_elements(By.CSS_SELECTOR, "#category-table tbody tr")
    }
    before, after = (float(cell.text.rstrip("%")) for cell in categories[garden.name])
    assert after >= before  # the diversity cap may already hold every shelf to its share: then garden moves up
    garden_rows = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in page.find_elements(By.CSS_SELECTOR, "#items-table tbody tr")
    ]
    garden_rows = [row for row in garden_rows if row[0].startswith(f"2{GARDEN}")]
    assert garden_rows
    assert sum(int(row[2]) + int(row[5]) for row in garden_rows) > 0  # lists entered + positions gained
    assert "estimate" in tables.text.lower()
    clicks = page.find_element(By.CSS_SELECTOR, "#estimate-table tbody tr").find_elements(By.TAG_NAME, "td")
    assert clicks[0].text == "clicks"
    assert page.find_elements(By.CSS_SELECTOR, "#items-table tbody tr")
    save_screenshot(page, "admin-rule-dry-run")

    # Publish from the same page: serving uses it at once.
    page.find_element(By.ID, "publish-submit").click()
    wait(page).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    rule.refresh_from_db()
    assert rule.status == "published"
    rules.reset()
    serving.clear_caches()
    assert [stored.rule.rule_id for stored in rules.published_rules()] == [rule.pk]
