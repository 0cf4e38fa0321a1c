"""Time as an input: event times at and past the rule's edges (1990, an hour ahead of receipt)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from catalog.models import Customer, Item
from events.models import Interaction
from tests.factories import CustomerFactory, ItemFactory

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
