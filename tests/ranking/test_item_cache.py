"""Serving's in-memory item attributes: the whole catalog in one query, no query per request once warm, changes
seen through the catalog version, items added behind its back read on first sight."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from catalog.models import Item
from catalog.services import ItemData, item_deactivate, item_upsert
from ranking import item_cache
from ranking.item_cache import ItemCache
from tests.factories import CategoryFactory, ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _check_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(item_cache, "_CHECK_SECONDS", 0.0)


def test_the_first_request_reads_the_catalog_once_then_no_query_for_known_items() -> None:
    shoes = CategoryFactory(external_id="shoes")
    items = [ItemFactory(category=shoes, price=10 + n) for n in range(5)]
    pks = np.array([item.pk for item in items], np.int64)
    cache = ItemCache()
    with CaptureQueriesContext(connection) as first:
        attributes, fresh = cache.attributes(pks, now=0.0)
    assert fresh
    assert attributes.known.all()
    assert attributes.available.all()
    assert attributes.category.tolist() == [shoes.pk] * 5
    assert attributes.price.tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
    # Attributes come by a binary COPY (not in Django's query log), then the external ids and the full rows (the
    # catalog is small enough to keep them all).
    assert len(first.captured_queries) == 2
    assert first.captured_queries[0]["sql"] == "SELECT external_id, id FROM catalog_item"
    with CaptureQueriesContext(connection) as shown:
        assert cache.rows(pks.tolist())[items[0].pk].title == items[0].title
    assert shown.captured_queries == []
    with CaptureQueriesContext(connection) as again:
        cache.attributes(pks[::-1], now=0.0)
        assert cache.pks_of([items[0].external_id, "not-an-item"]).tolist() == [items[0].pk]
    assert len(again.captured_queries) == 1  # only the unknown id was looked up


def test_a_change_is_seen_once_the_catalog_version_moves(django_capture_on_commit_callbacks: object) -> None:
    item = ItemFactory(external_id="mug", price=5)
    other = ItemFactory(external_id="cup")
    cache = ItemCache()
    pks = np.array([item.pk, other.pk], np.int64)
    assert cache.attributes(pks, now=0.0)[0].available.tolist() == [True, True]
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        item_deactivate(external_id="mug")
    assert cache.attributes(pks, now=0.0)[0].available.tolist() == [False, True]
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        item_upsert(external_id="cup", data=ItemData(title="Cup", price=7, in_stock=False))
    attributes, _ = cache.attributes(pks, now=0.0)
    assert attributes.available.tolist() == [False, False]
    assert attributes.price.tolist() == [5.0, 7.0]


def test_items_added_without_a_version_bump_are_read_on_first_sight_and_unknown_ones_are_unavailable() -> None:
    cache = ItemCache()
    first = ItemFactory()
    cache.attributes(np.array([first.pk]), now=0.0)
    added = ItemFactory()  # e.g. a placeholder created by an event: no version bump
    attributes, fresh = cache.attributes(np.array([added.pk, added.pk + 1000]), now=0.0)
    assert fresh
    assert attributes.known.tolist() == [True, False]
    assert attributes.available.tolist() == [True, False]
    assert np.isnan(attributes.price[1])


def test_rows_and_exclude_ids_for_the_shown_items() -> None:
    item = ItemFactory(external_id="lamp", title="Desk lamp")
    cache = ItemCache()
    assert cache.rows([item.pk])[item.pk].title == "Desk lamp"
    assert cache.pks_of(["lamp", "no-such-item"]).tolist() == [item.pk]
    with CaptureQueriesContext(connection) as again:
        assert cache.pks_of(["lamp", "no-such-item"]).tolist() == [item.pk]  # unknown ids remembered too
    assert again.captured_queries == []


@pytest.mark.django_db(transaction=True)
def test_the_periodic_full_read_runs_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    item = ItemFactory(price=3)
    cache = ItemCache()
    pks = np.array([item.pk], np.int64)
    assert cache.attributes(pks, now=0.0)[0].price.tolist() == [3.0]
    Item.objects.filter(pk=item.pk).update(price=4)  # behind the version's back: only the full read can see it
    monkeypatch.setattr(item_cache, "_FULL_SYNC_SECONDS", 0.0)
    cache.attributes(pks, now=0.0)  # starts the full read in a thread of its own and does not wait for it
    assert cache.background is not None
    assert cache.background.name == "item-cache-sync"
    cache.background.join(timeout=10)
    assert not cache.background.is_alive()
    monkeypatch.setattr(item_cache, "_FULL_SYNC_SECONDS", 900.0)
    assert cache.attributes(pks, now=0.0)[0].price.tolist() == [4.0]
