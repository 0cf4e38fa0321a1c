"""A merchandiser in a real browser reads an experiment's results page: two weeks of a running A/B test on the home
page, the challenger ahead on the primary metric, the tables per metric and the charts over time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec

from catalog.models import Category, Customer, Item
from events.models import Interaction
from experiments import services
from experiments.models import Experiment, Impression, Variant
from experiments.validation import VariantSpec
from tests.browser.support import save_screenshot, wait

pytestmark = pytest.mark.browser

DAYS = 14
CUSTOMERS = 4000
# The simulated truth: the challenger's lists get clicked and bought from more often.
CLICK_RATE = {"control": 0.085, "ranker-v2": 0.11}
CONVERSION_RATE = {"control": 0.05, "ranker-v2": 0.075}


def _two_weeks_of_traffic(user_id: int) -> Experiment:
    """A running experiment started two weeks ago, with every customer's impressions, clicks, add-to-carts and
    purchases stored as serving and event ingestion store them (seeded, so the page looks the same every run)."""
    rng = np.random.default_rng(42)
    categories = [Category.objects.create(external_id=f"c{n}", name=name) for n, name in enumerate(("A", "B", "C"))]
    items = Item.objects.bulk_create(
        Item(external_id=f"i{n}", title=f"Item {n}", category=categories[n % 3], price=round(3 + n * 0.5, 2))
        for n in range(60)
    )
    experiment = services.experiment_create(
        key="home-ranker-v2",
        name="Home: ranker v2",
        hypothesis="The retrained ranker puts what a customer will buy higher in the home list.",
        surface="home",
        primary_metric=Experiment.Metric.CONVERSION_RATE,
        minimum_detectable_effect=0.3,
        guardrails={"coverage": 0.3},
        variants=[VariantSpec("control", 0.5, True), VariantSpec("ranker-v2", 0.5, False, {"model_version": 2})],
    )
    services.experiment_start(experiment_id=experiment.pk, user_id=user_id)
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=DAYS - 1)
    Experiment.objects.filter(pk=experiment.pk).update(start_at=start)  # as if started two weeks ago
    variants = {v.name: v for v in Variant.objects.filter(experiment=experiment)}
    customers = Customer.objects.bulk_create(Customer(external_id=f"shopper-{n}") for n in range(CUSTOMERS))
    latest = timezone.now() - dt.timedelta(minutes=5)
    impressions, events = [], []
    for customer in customers:
        name = services.assign(surface="home", unit_id=customer.external_id).variant
        assert name is not None
        first_day = int(rng.integers(DAYS))
        shown: list[tuple[str, dt.datetime, list[int]]] = []
        for n in range(1 + int(rng.poisson(1.5))):
            day = first_day + int(rng.integers(1, 4)) * n
            if day >= DAYS:
                break
            served = min(latest, start + dt.timedelta(days=day, hours=float(rng.uniform(7, 22))))
            pks = [items[int(i)].pk for i in rng.choice(len(items), 8, replace=False)]
            request_id = f"{customer.external_id}-{n}"
            shown.append((request_id, served, pks))
            impressions.append(
                Impression(
                    request_id=request_id,
                    served_at=served,
                    surface="home",
                    customer=customer,
                    experiment=experiment,
                    variant=variants[name],
                    item_pks=pks,
                    model_version=1,
                )
            )
            if rng.random() < CLICK_RATE[name]:
                events.append(
                    _event(f"{request_id}-click", customer, pks[0], Interaction.Type.CLICK, served, request_id)
                )
        request_id, served, pks = shown[0]
        item = pks[int(rng.integers(len(pks)))]
        if rng.random() < CONVERSION_RATE[name] + 0.03:  # some carts are abandoned
            events.append(
                _event(f"{request_id}-cart", customer, item, Interaction.Type.ADD_TO_CART, served, request_id)
            )
        if rng.random() < CONVERSION_RATE[name]:
            value = float(np.round(rng.gamma(2.0, 9.0), 2))
            events.append(
                _event(f"{request_id}-buy", customer, item, Interaction.Type.PURCHASE, served, request_id, value)
            )
    Impression.objects.bulk_create(impressions)
    Interaction.objects.bulk_create(events)
    experiment.refresh_from_db()
    return experiment


def _event(
    event_id: str,
    customer: Customer,
    item: int,
    type_: int,
    served: dt.datetime,
    request_id: str,
    value: float | None = None,
) -> Interaction:
    return Interaction(
        event_id=event_id, customer=customer, item_id=item, type=type_, value=value, request_id=request_id,
        occurred_at=served + dt.timedelta(minutes=2 + 3 * (type_ == Interaction.Type.PURCHASE)),
    )  # fmt: skip


def test_the_results_page_shows_the_leader_the_tables_and_the_charts(
    page: WebDriver, live_server: Any, transactional_db: None
) -> None:
    user = get_user_model().objects.create_user("analyst", password="read-the-page", is_staff=True, is_superuser=True)
    experiment = _two_weeks_of_traffic(user.pk)
    results = services.experiment_results(key=experiment.key)
    control, challenger = results.variants
    assert challenger.conversion_rate.vs_control is not None

    page.get(f"{live_server.url}/admin/")
    page.find_element(By.ID, "id_username").send_keys("analyst")
    page.find_element(By.ID, "id_password").send_keys("read-the-page")
    page.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(page).until(ec.presence_of_element_located((By.ID, "user-tools")))

    # From the list, through the experiment's "results" link, as a merchandiser gets there.
    page.get(f"{live_server.url}{reverse('admin:experiments_experiment_changelist')}")
    page.find_element(By.LINK_TEXT, "results").click()
    wait(page).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".exp-results svg")))
    assert page.current_url.endswith(reverse("admin:experiments_experiment_results", args=[experiment.pk]))
    assert page.find_element(By.TAG_NAME, "h1").text == "Results: Home: ranker v2"

    # The exposure table: one row per variant, with the counts the analysis used.
    exposure = page.find_elements(By.CSS_SELECTOR, ".exp-results table:nth-of-type(2) tbody tr")
    assert [row.find_elements(By.TAG_NAME, "td")[0].text for row in exposure] == ["control (control)", "ranker-v2"]
    for row, variant in zip(exposure, results.variants, strict=True):
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1:4] == ["50.0%", str(variant.exposures), str(variant.impressions)]
    assert control.exposures + challenger.exposures == CUSTOMERS

    # The primary metric's table comes first; the challenger's row is the one marked better.
    headings = [h.text for h in page.find_elements(By.CSS_SELECTOR, ".exp-results h2")]
    assert headings[:3] == ["Exposure", "Conversion rate (primary)", "Click-through rate"]
    better = page.find_elements(By.CSS_SELECTOR, ".exp-results td.better")
    assert better
    primary_rows = page.find_elements(By.CSS_SELECTOR, ".exp-results table:nth-of-type(3) tbody tr")
    leader = primary_rows[1].find_elements(By.TAG_NAME, "td")
    comparison = challenger.conversion_rate.vs_control
    assert leader[0].text == "ranker-v2"
    assert "better" in (leader[2].get_attribute("class") or "")
    assert leader[6].text == f"{comparison.chance_to_beat_control * 100:.1f}%"
    assert "(no mismatch)" in page.find_element(By.ID, "content-main").text
    assert not page.find_elements(By.ID, "srm-warning")

    # Two charts over the two weeks: a line per variant.
    charts = page.find_elements(By.CSS_SELECTOR, ".exp-results .chart svg")
    assert len(charts) == 2
    assert len(charts[0].find_elements(By.TAG_NAME, "polyline")) == 2
    assert "ranker-v2" in charts[0].text
    assert "control" in charts[0].text
    save_screenshot(page, "experiment-results")
