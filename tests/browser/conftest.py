"""Fixtures for the end-to-end tests in headless Chromium: the browser, a small giftware world with a trained
model (committed, because the live server and the storefront's own API calls run on other connections), and
the per-test resets.

The browser comes from Debian's ``chromium`` and ``chromium-driver`` packages (``make test`` installs them);
the tests skip, saying so, only when those binaries are absent, and fail instead when RECSYS_REQUIRE_BROWSER=1
(CI's ``.ci/run`` sets it, so a green CI run means the browser tests ran).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.db import connection
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from catalog.models import Category, Customer, Item
from events.models import Interaction
from events.services import online_state_rebuild
from experiments.services import assignment_cache_clear
from ranking import rules, services, serving
from ranking.artifacts import loader
from storefront import views as storefront
from tests.browser.support import (
    CHROMEDRIVER,
    CHROMIUM,
    CUSTOMERS_PER_SHELF,
    PARAMS,
    PER_SHELF,
    SHELVES,
    START,
    WINDOW,
    customer_id,
    item_id,
)


@pytest.fixture(scope="session")
def chromium() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        reason = (
            f"headless Chromium is not installed ({', '.join(missing)} missing): "
            "`make test` installs Debian's chromium and chromium-driver with apt-get when it can"
        )
        if os.environ.get("RECSYS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}; RECSYS_REQUIRE_BROWSER=1 forbids skipping the browser tests", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _live_server_connections(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Close the database sessions the live server's keep-alive threads still hold after the browser tests, so
    the test database can be dropped. Set up before the live server, so torn down after it; touches only the
    sessions opened since (never, say, the Celery worker's)."""
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        (started,) = cursor.fetchone()
    yield
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_start > %s AND state <> 'active'",
            [started],
        )


@pytest.fixture(scope="session")
def browser(chromium: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the session (starting one costs about a second), with a fresh profile."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser for one test: no cookies left over from the previous one."""
    browser.delete_all_cookies()
    yield browser
    browser.delete_all_cookies()


@pytest.fixture(autouse=True)
def _storefront_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The storefront keeps its keys in this test's directory (never the demo's var/), and every in-process
    cache starts empty: the database is emptied after each transactional test."""
    monkeypatch.setattr(storefront, "KEYS_FILE", tmp_path / "storefront_keys.json")
    storefront.clear_caches()
    serving.clear_caches()
    rules.reset()
    loader().reset()
    assignment_cache_clear()
    yield
    storefront.clear_caches()
    loader().reset()


@pytest.fixture
def world(transactional_db: None) -> dict[str, Any]:
    """The giftware world, committed, with a model trained and activated on it. Function-scoped: the live
    server's tests are transactional, so the database is emptied after each one."""
    rng = np.random.default_rng(7)
    categories = [
        Category.objects.create(external_id=key, name=storefront.category_label(key)) for key, _, _ in SHELVES
    ]
    items = Item.objects.bulk_create(
        Item(external_id=item_id(s, n), title=f"{adjectives[n % 4]} {nouns[n // 4]}", category=categories[s],
             price=round(1.25 + 0.85 * n + s, 2), created_at=START)
        for s, (_, adjectives, nouns) in enumerate(SHELVES) for n in range(PER_SHELF)
    )  # fmt: skip
    customers = Customer.objects.bulk_create(
        Customer(external_id=customer_id(s, n)) for s in range(len(SHELVES)) for n in range(CUSTOMERS_PER_SHELF)
    )
    events = []
    for n, customer in enumerate(customers):
        shelf = n // CUSTOMERS_PER_SHELF
        # The first customer of each shelf buys the most, so the storefront's picker offers them.
        picks = PER_SHELF - 2 if n % CUSTOMERS_PER_SHELF == 0 else 5
        for k, pick in enumerate(rng.choice(PER_SHELF, picks, replace=False)):
            events.append(Interaction(
                event_id=f"w{n}-{k}", customer=customer, item=items[shelf * PER_SHELF + int(pick)],
                type=Interaction.Type.PURCHASE, session_id=f"o{n}-{k // 2}",
                occurred_at=START + dt.timedelta(days=float(rng.uniform(0, 120))),
            ))  # fmt: skip
    Interaction.objects.bulk_create(events)
    online_state_rebuild()  # the histories behind "Because you bought …", as after an import
    version = services.model_train(params=PARAMS, force=True).version
    loader().reset()
    return {"items": items, "customers": customers, "version": version}
