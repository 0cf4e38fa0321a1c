"""Time as an input: event and item times at and past the rules' edges, what rows stored outside them do to the
readers that compute with times (the online state's rebuild, training, evaluation, new arrivals), and hosts whose
clocks disagree."""

from __future__ import annotations

import datetime as dt
import math
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from catalog.models import Customer, Item
from catalog.services import item_deactivate
from events import keys, online
from events.models import Interaction
from kernel import redis_client
from ranking import item_cache, services
from ranking import selectors as ranking_selectors
from ranking.item_cache import ItemCache
from tests.factories import CategoryFactory, CustomerFactory, ItemFactory
from tests.worlds import SMALL_PARAMS, cluster_world

pytestmark = pytest.mark.django_db

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _admin_add(client: Any, *, customer: Customer, item: Item, day: str, time: str = "12:00:00") -> Any:
    return client.post(
        "/admin/events/interaction/add/",
        {
            "event_id": f"adm-{day}", "customer": customer.pk, "session_id": "", "item": item.pk, "type": 1,
            "value": "", "occurred_at_0": day, "occurred_at_1": time, "request_id": "",
        },
    )  # fmt: skip


@pytest.mark.parametrize("day", ["9999-12-31", "2100-01-01", "0001-01-02", "1989-12-31"])
def test_an_event_time_typed_in_the_admin_follows_the_rule_of_the_api(admin_client: Any, day: str) -> None:
    """The admin's interaction form stored any date (year 1, 9999), which the API and the imports refuse; one such
    row then failed every rebuild of the online state (below). Now the form names the field and stores nothing."""
    customer, item = CustomerFactory(external_id="C1"), ItemFactory(external_id="I1")

    response = _admin_add(admin_client, customer=customer, item=item, day=day)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["occurred_at"]
    assert "is in the future" in errors["occurred_at"][0] or "is before 1990" in errors["occurred_at"][0]
    assert not Interaction.objects.filter(event_id=f"adm-{day}").exists()


def test_the_admin_stores_a_time_within_the_rule_and_keeps_a_stored_one_through_other_edits(admin_client: Any) -> None:
    customer, item = CustomerFactory(external_id="C1"), ItemFactory(external_id="I1")
    yesterday = NOW - dt.timedelta(days=1)

    response = _admin_add(admin_client, customer=customer, item=item, day=yesterday.date().isoformat())
    assert response.status_code == 302
    assert Interaction.objects.get(event_id=f"adm-{yesterday.date().isoformat()}").occurred_at.year == yesterday.year

    # A row stored before the rule (year 9999) keeps its time when another field is edited...
    old = Interaction.objects.create(
        event_id="old", customer=customer, item=item, type=1, occurred_at=dt.datetime(9999, 12, 31, 12, tzinfo=dt.UTC)
    )
    edit = {
        "event_id": "old", "customer": customer.pk, "session_id": "", "item": item.pk, "type": 2, "value": "",
        "occurred_at_0": "9999-12-31", "occurred_at_1": "12:00:00", "request_id": "",
    }  # fmt: skip
    assert admin_client.post(f"/admin/events/interaction/{old.pk}/change/", edit).status_code == 302
    assert Interaction.objects.get(pk=old.pk).type == 2
    # ... but cannot be moved to another time outside the rule, measured from when it was received.
    moved = admin_client.post(f"/admin/events/interaction/{old.pk}/change/", {**edit, "occurred_at_0": "2100-01-01"})
    assert moved.status_code == 200
    assert list(moved.context["adminform"].form.errors) == ["occurred_at"]


@pytest.mark.parametrize(
    "stored", [dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.UTC), dt.datetime(1, 1, 2, tzinfo=dt.UTC)]
)
def test_rows_stored_outside_the_rule_cannot_break_the_rebuild_of_the_online_state(stored: dt.datetime) -> None:
    """Year 9999 failed the rebuild with Postgres' "value out of range: overflow", year 1 with "underflow" (the
    affinities' forward decay, 2^((t - 2025) / 30 days)); serving then stayed degraded, asking for rebuilds that all
    failed. Such a row now counts at the nearest time the rule allows: an hour after it was received, or 1990."""
    shoes = CategoryFactory(external_id="shoes")
    customer, item = CustomerFactory(external_id="C1"), ItemFactory(external_id="I1", category=shoes)
    other = ItemFactory(external_id="I2", category=shoes)
    Interaction.objects.create(event_id="ok", customer=customer, item=other, type=1, occurred_at=NOW)
    odd = Interaction.objects.create(
        event_id="odd", customer=customer, item=item, type=4, occurred_at=stored, received_at=NOW
    )

    call_command("rebuild_online_state", stdout=StringIO(), stderr=StringIO())

    assert redis_client.get().exists(keys.ONLINE_STATE_COMPLETE)
    affinity = online.read_affinity("C1", now=NOW.timestamp())
    assert set(affinity) == {shoes.pk}
    assert math.isfinite(affinity[shoes.pk])
    assert affinity[shoes.pk] > 0
    times = {
        int(member.split(b":")[2]): ts
        for member, ts in redis_client.get().zrange(keys.history("C1"), 0, -1, withscores=True)
    }
    expected = min(max(stored, dt.datetime(1990, 1, 1, tzinfo=dt.UTC)), NOW + dt.timedelta(hours=1))
    assert times[odd.pk] == expected.timestamp()
    # No counter bucket dated in a far year (it would have lived until then).
    hours = [int(key.rsplit(b":", 1)[-1]) for key in redis_client.get().scan_iter(match=b"*cnt:*")]
    assert all(hour * 3600 <= (NOW + dt.timedelta(hours=1)).timestamp() for hour in hours)


def _live_world() -> dict[str, Any]:
    """The shared cluster world moved so that its 120 days end today, as a live shop's do."""
    world = cluster_world(clusters=[("red", "mug"), ("blue", "hat")], per_cluster=8, seed=1)
    shift = NOW - dt.timedelta(days=121) - dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for row in Interaction.objects.all():
        Interaction.objects.filter(pk=row.pk).update(occurred_at=row.occurred_at + shift, received_at=NOW)
    return world


def test_a_row_dated_9999_does_not_move_the_training_datas_now() -> None:
    """With fewer than a thousand events the data's "now" (reference_ts) is the latest event's time: one row dated
    9999 made it 9999, so every real event decayed to nothing and ``evaluate`` found no test user ("the split has
    no test user with a new relevant item"). The row counts an hour after it was received now."""
    world = _live_world()
    Interaction.objects.create(
        event_id="odd", customer=world["customers"][0], item=world["items"][0], type=4,
        occurred_at=dt.datetime(9999, 12, 31, tzinfo=dt.UTC), received_at=NOW,
    )  # fmt: skip

    columns = ranking_selectors.interaction_columns()
    assert columns["ts"].max() == (NOW + dt.timedelta(hours=1)).timestamp()
    assert list(columns["ts"]) == sorted(columns["ts"])  # still in time order
    out = StringIO()
    call_command("evaluate", "--no-pipeline", stdout=out, stderr=StringIO())
    assert "protocol temporal" in out.getvalue()


def test_an_online_retail_file_with_times_outside_the_rule_names_its_own_column(tmp_path: Path) -> None:
    """Each bad row is reported with file, line and reason, naming InvoiceDate: the shared rule said
    ``occurred_at``, a column an Online Retail file does not have. The good row is stored."""
    ItemFactory(external_id="85123A")
    path = tmp_path / "retail.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,MUG,6,12/1/2100 8:26,2.55,17850,UK\n"  # the workbook's format, in the future
        "536366,85123A,MUG,6,2100-12-01T08:26:00,2.55,17850,UK\n"  # ISO 8601, in the future
        "536367,85123A,MUG,6,12/1/1980 8:26,2.55,17850,UK\n"  # before 1990
        "536368,85123A,MUG,6,yesterday,2.55,17850,UK\n"
        "536369,85123A,MUG,6,2/29/2024 23:59,2.55,17850,UK\n"  # a leap day: stored
    )
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="4 rows were rejected"):  # after storing the rest (the exit status)
        call_command("import_events", str(path), "--format", "online-retail", "--quiet", stdout=out, stderr=err)

    lines = [line for line in err.getvalue().splitlines() if line.startswith(f"{path}:")]
    assert [line.split(": ", 2)[:2] for line in lines] == [[f"{path}:{n}", "InvoiceDate"] for n in (2, 3, 4, 5)]
    assert "is in the future" in lines[0]
    assert "is in the future" in lines[1]
    assert "is before 1990" in lines[2]
    assert "occurred_at" not in err.getvalue()
    assert list(Interaction.objects.values_list("session_id", "occurred_at")) == [
        ("536369", dt.datetime(2024, 2, 29, 23, 59, tzinfo=dt.UTC))
    ]


def test_an_item_listed_in_the_future_is_no_new_arrival_until_then(api: Any) -> None:
    """``created_at`` may be up to the year 3000 (the catalog's rule): an item listed in 2999 was the newest arrival
    served, and would stay so for centuries, above every item really listed since. Serving's new arrivals are the
    items listed by now, as evaluation's offline lists already were (``ranking.pipeline.offline``)."""
    for sku, listed in [("old", NOW - dt.timedelta(days=2)), ("recent", NOW - dt.timedelta(hours=1))]:
        assert (
            api.put(f"/v1/items/{sku}", {"title": sku, "created_at": listed.isoformat()}, format="json").status_code
            == 201
        )
    for sku, listed in [("tomorrow", NOW + dt.timedelta(days=1)), ("far", dt.datetime(2999, 1, 1, tzinfo=dt.UTC))]:
        assert (
            api.put(f"/v1/items/{sku}", {"title": sku, "created_at": listed.isoformat()}, format="json").status_code
            == 201
        )

    response = api.get("/v1/recommendations?count=10")

    assert response.status_code == 200
    new = [item["item_id"] for item in response.json()["items"] if item["reason"]["code"] == "new_arrival"]
    assert new == ["recent", "old"]


def test_an_item_written_by_a_host_whose_clock_runs_ahead_hides_no_later_change_from_serving(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    """Serving's item cache reads the items updated since the latest ``updated_at`` it has seen (less ten minutes).
    A row written by a host whose clock ran an hour ahead moved that mark an hour on, so the next changes written by
    hosts on time were not read: an item taken out of stock was still served as available until the next full
    read. The mark never passes the reading process's own clock now."""
    monkeypatch.setattr(item_cache, "_CHECK_SECONDS", 0.0)
    mug, cup = ItemFactory(external_id="mug"), ItemFactory(external_id="cup")
    Item.objects.filter(pk=mug.pk).update(updated_at=NOW + dt.timedelta(hours=1))  # the host ahead wrote it
    cache = ItemCache()
    pks = np.array([mug.pk, cup.pk], np.int64)
    assert cache.attributes(pks, now=NOW.timestamp())[0].available.tolist() == [True, True]

    with django_capture_on_commit_callbacks(execute=True):
        item_deactivate(external_id="cup")  # this host, on time

    assert cache.attributes(pks, now=NOW.timestamp())[0].available.tolist() == [True, False]


@pytest.mark.parametrize(
    ("stored", "days"),
    [
        (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC), None),  # the nightly run: all the data
        (dt.datetime(9999, 12, 31, tzinfo=dt.UTC), 30.0),  # train --days 30
    ],
)
def test_a_row_dated_9999_neither_stops_training_nor_becomes_its_window(
    stored: dt.datetime, days: float | None, settings: Any, tmp_path: Path
) -> None:
    """Training's window ends just after the latest ``occurred_at``: a row at the last instant of 9999 made that an
    ``OverflowError`` (the nightly training failed every night), one earlier in 9999 made ``--days 30`` the thirty
    days before it, holding that row alone. The window ends after the latest time the events' rule allows."""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    world = _live_world()
    Interaction.objects.create(
        event_id="odd", customer=world["customers"][0], item=world["items"][0], type=4, occurred_at=stored,
        received_at=NOW,
    )  # fmt: skip

    version = services.model_train(params=SMALL_PARAMS, days=days, force=True).version

    assert version.data_to is not None
    assert version.data_to <= NOW + dt.timedelta(hours=1, seconds=1)
    since = NOW + dt.timedelta(hours=1, seconds=1) - dt.timedelta(days=days or 36_500)
    real = Interaction.objects.exclude(event_id="odd").filter(occurred_at__gte=since)
    assert version.sizes["n_users"] == real.values("customer").distinct().count() > 1
