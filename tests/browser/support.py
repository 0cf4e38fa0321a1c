"""Helpers shared by the browser tests: the world's shape, waits, and saving screenshots for the docs."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from ranking.training import TrainParams

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WINDOW = (1280, 900)

# Four shelves of twelve items each, named like the demo's giftware, in the demo's category ids (so the
# storefront shows "Kitchen & dining"). Customers buy within one shelf, so recommendations have a clear taste.
SHELVES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("kitchen", ("Strawberry", "Red retrospot", "Vintage doily", "Pantry"), ("mug", "cake stand", "tea towel")),
    ("lighting", ("Moroccan", "White heart", "Glass star", "Zinc"), ("T-light holder", "lantern", "fairy lights")),
    ("garden", ("Herb", "Enamel", "Birdhouse", "Watering"), ("marker set", "plant pot", "bird feeder")),
    ("stationery", ("Spaceboy", "Dolly girl", "Woodland", "Paisley"), ("gift wrap", "notebook", "birthday card")),
)
PER_SHELF = 12
CUSTOMERS_PER_SHELF = 12
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PARAMS = TrainParams(
    als_factors=8, als_iterations=8, neighbours_k=10, fbt_k=5, content_dims=8, content_k=5,
    half_life_days=None, history_half_life_days=None, validation_days=30, tune_budget_seconds=0,
    serve="pipeline",  # these tests are about the pipeline; the never-worse choice has its own tests
)  # fmt: skip


def item_id(shelf: int, n: int) -> str:
    return f"2{shelf}{n:03d}"


def customer_id(shelf: int, n: int) -> str:
    return f"1{shelf}{n:03d}"


def wait(driver: WebDriver, seconds: float = 10) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.05)


def save_screenshot(driver: WebDriver, name: str) -> None:
    """With SAVE_SCREENSHOTS=1, the whole page as a person sees it, into docs/screenshots/NAME.png."""
    if os.environ.get("SAVE_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    # A viewport as tall as the page (Chrome's device metrics, not the window, which includes its frame).
    driver.execute_cdp_cmd(  # type: ignore[attr-defined]
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": min(height, 3000), "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})  # type: ignore[attr-defined]
