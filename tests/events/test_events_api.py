"""POST /v1/events and POST /v1/sessions/{id}/merge: validation, idempotency, partial failure, limits, auth,
session merge, attribution, and a Redis outage that must not fail an accepted event."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from catalog.models import Customer
from events import selectors
from events.models import Interaction
from kernel import redis_client
from tests.factories import CustomerFactory, ItemFactory

pytestmark = pytest.mark.django_db

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def at(minutes_ago: float) -> str:
    return (NOW - dt.timedelta(minutes=minutes_ago)).isoformat()


def event(**fields: Any) -> dict[str, Any]:
    body = {"customer_id": "C1", "item_id": "I1", "type": "view", "occurred_at": at(10)}
    body.update(fields)
    return {name: value for name, value in body.items() if value is not ...}


def post(client: APIClient, body: Any) -> Any:
    return client.post("/v1/events", body, format="json")


@pytest.fixture
def items() -> None:
    for sku in ("I1", "I2", "I3"):
        ItemFactory(external_id=sku)


# --- One event ------------------------------------------------------------------------------------------------


def test_single_event_is_stored_with_every_field(api: APIClient, items: None) -> None:
    response = post(api, event(event_id="e1", type="purchase", value=2, session_id="s1", request_id="r1"))
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    row = Interaction.objects.select_related("customer", "item").get(event_id="e1")
    assert (row.customer.external_id, row.session_id, row.item.external_id) == ("C1", "s1", "I1")
    assert (row.type, row.value, row.request_id) == (Interaction.Type.PURCHASE, 2.0, "r1")
    assert row.occurred_at == NOW - dt.timedelta(minutes=10)


def test_unknown_customer_is_created_known_one_reused(api: APIClient, items: None) -> None:
    CustomerFactory(external_id="C1")
    post(api, {"events": [event(event_id="e1"), event(event_id="e2", customer_id="NEW")]})
    assert sorted(Customer.objects.values_list("external_id", flat=True)) == ["C1", "NEW"]


def test_anonymous_event_needs_only_a_session(api: APIClient, items: None) -> None:
    response = post(api, event(customer_id=..., session_id="anon-1"))
    assert response.status_code == 202
    row = Interaction.objects.get()
    assert (row.customer_id, row.session_id) == (None, "anon-1")


def test_occurred_at_defaults_to_now_and_naive_time_is_utc(api: APIClient, items: None) -> None:
    post(api, {"events": [event(event_id="e1", occurred_at=...), event(event_id="e2", occurred_at="2026-01-02T03:04")]})
    received = Interaction.objects.get(event_id="e1")
    assert received.occurred_at == received.received_at
    assert Interaction.objects.get(event_id="e2").occurred_at == dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"item_id": ...}, {"item_id": ["This field is required."]}),
        ({"item_id": "  "}, {"item_id": ["May not be blank."]}),
        ({"item_id": 12}, {"item_id": ["Must be a string."]}),
        ({"item_id": "x" * 101}, {"item_id": ["Longer than 100 characters."]}),
        ({"item_id": "NOPE"}, {"item_id": ["Unknown item_id 'NOPE'."]}),
        ({"customer_id": ..., "session_id": ...}, {"customer_id": ["Either customer_id or session_id is required."]}),
        ({"customer_id": "c" * 101}, {"customer_id": ["Longer than 100 characters."]}),
        ({"session_id": ["s"]}, {"session_id": ["Must be a string."]}),
        ({"event_id": "e" * 101}, {"event_id": ["Longer than 100 characters."]}),
        ({"type": ...}, {"type": ["This field is required."]}),
        ({"type": "like"}, {"type": ["'like' is not one of view, click, add_to_cart, purchase, rating, dismiss."]}),
        ({"type": 1}, {"type": ["Must be a string."]}),
        ({"type": "rating"}, {"value": ["A rating needs a value."]}),
        ({"value": "lots"}, {"value": ["Must be a number."]}),
        ({"value": "5"}, {"value": ["Must be a number."]}),  # a JSON number only (docs/api.md, "Input rules")
        ({"value": True}, {"value": ["Must be a number."]}),
        ({"value": "NaN"}, {"value": ["Must be a number."]}),
        ({"occurred_at": "yesterday"}, {"occurred_at": ["'yesterday' is not an ISO 8601 date-time."]}),
        ({"occurred_at": 1700000000}, {"occurred_at": ["Must be an ISO 8601 date-time string."]}),
        ({"occurred_at": "1989-12-31T00:00:00Z"}, {"occurred_at": ["1989-12-31T00:00:00+00:00 is before 1990."]}),
        ({"request_id": "r" * 65}, {"request_id": ["Longer than 64 characters."]}),
    ],
)
def test_single_invalid_event_is_400_naming_the_field(
    api: APIClient, items: None, fields: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    response = post(api, event(**fields))
    assert response.status_code == 400
    assert response.json() == errors
    assert not Interaction.objects.exists()


def test_far_future_is_rejected_but_clock_skew_is_not(api: APIClient, items: None) -> None:
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    response = post(api, event(occurred_at=future))
    assert response.status_code == 400
    assert response.json()["occurred_at"][0].endswith("is in the future.")
    skewed = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    assert post(api, event(occurred_at=skewed)).status_code == 202


def test_every_field_error_is_reported_at_once(api: APIClient, items: None) -> None:
    response = post(api, {"item_id": 5, "type": "nope", "customer_id": ""})
    assert response.status_code == 400
    assert set(response.json()) == {"item_id", "type", "customer_id"}


# --- Bodies -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ([event()], {"non_field_errors": ['Expected a JSON object: one event, or {"events": [...]}.']}),
        ("just text", {"non_field_errors": ['Expected a JSON object: one event, or {"events": [...]}.']}),
        ({"events": {"0": event()}}, {"events": ["Expected a list of event objects."]}),
        ({"events": [event()] * 1001}, {"events": ["At most 1000 events per request; got 1001."]}),
    ],
)
def test_unusable_body_is_400(api: APIClient, items: None, body: Any, errors: dict[str, list[str]]) -> None:
    response = post(api, body)
    assert response.status_code == 400
    assert response.json() == errors
    assert not Interaction.objects.exists()


def test_body_that_is_not_json_is_400(api: APIClient) -> None:
    response = api.post("/v1/events", data="{not json", content_type="application/json")
    assert response.status_code == 400
    # The shape every endpoint gives (a tenth tester found the events' own {"non_field_errors": [...]} apart).
    assert response.json()["detail"].startswith("JSON parse error")


def test_batch_of_1000_is_accepted(api: APIClient, items: None) -> None:
    body = {"events": [event(event_id=f"e{i}", occurred_at=at(i / 10)) for i in range(1000)]}
    assert post(api, body).json() == {"accepted": 1000, "duplicates": 0, "rejected": []}
    assert Interaction.objects.count() == 1000


# --- Batches: partial failure and idempotency ---------------------------------------------------------------


def test_batch_stores_valid_events_and_reports_invalid_ones_by_index(api: APIClient, items: None) -> None:
    body = {
        "events": [
            event(event_id="ok-0"),
            event(event_id="bad-1", type="teleport"),
            "not an object",
            event(event_id="ok-3", item_id="I2"),
            event(event_id="bad-4", item_id="GONE"),
        ]
    }
    response = post(api, body)
    assert response.status_code == 202
    assert response.json() == {
        "accepted": 2,
        "duplicates": 0,
        "rejected": [
            {
                "index": 1,
                "errors": {"type": ["'teleport' is not one of view, click, add_to_cart, purchase, rating, dismiss."]},
            },
            {"index": 2, "errors": {"non_field_errors": ["Expected a JSON object."]}},
            {"index": 4, "errors": {"item_id": ["Unknown item_id 'GONE'."]}},
        ],
    }
    assert set(Interaction.objects.values_list("event_id", flat=True)) == {"ok-0", "ok-3"}


def test_same_event_id_twice_is_stored_once_and_counted_as_duplicate(api: APIClient, items: None) -> None:
    assert post(api, event(event_id="e1")).json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    # A retry, even with different content: the idempotency key decides.
    assert post(api, event(event_id="e1", item_id="I2")).json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert Interaction.objects.get().item.external_id == "I1"


def test_duplicates_within_a_batch_are_stored_once(api: APIClient, items: None) -> None:
    body = {"events": [event(event_id="e1"), event(event_id="e2"), event(event_id="e1"), event(event_id="e2")]}
    assert post(api, body).json() == {"accepted": 2, "duplicates": 2, "rejected": []}
    assert Interaction.objects.count() == 2


def test_events_without_event_id_are_idempotent_by_content(api: APIClient, items: None) -> None:
    body = {"events": [event(), event(type="click")]}
    assert post(api, body).json()["accepted"] == 2
    assert post(api, body).json() == {"accepted": 0, "duplicates": 2, "rejected": []}
    assert all(event_id.startswith("d-") for event_id in Interaction.objects.values_list("event_id", flat=True))


def test_events_without_id_or_time_are_not_collapsed(api: APIClient, items: None) -> None:
    # Two identical views sent at different moments are two views; their derived ids differ by the arrival time.
    post(api, event(occurred_at=...))
    post(api, event(occurred_at=...))
    assert Interaction.objects.count() == 2


def test_metrics_count_ingested_by_type_and_rejected(api: APIClient, items: None) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    views, clicks = (
        sample("recsys_events_ingested_total", type="view"),
        sample("recsys_events_ingested_total", type="click"),
    )
    rejected = sample("recsys_events_rejected_total")
    body = {"events": [event(event_id="a"), event(event_id="b", type="click"), event(event_id="a"), event(type="x")]}
    post(api, body)
    assert sample("recsys_events_ingested_total", type="view") == views + 1
    assert sample("recsys_events_ingested_total", type="click") == clicks + 1
    assert sample("recsys_events_rejected_total") == rejected + 1


# --- Auth -------------------------------------------------------------------------------------------------------


def test_missing_key_is_401() -> None:
    assert APIClient().post("/v1/events", event(), format="json").status_code == 401
    assert APIClient().post("/v1/sessions/s1/merge", {"customer_id": "C1"}, format="json").status_code == 401


def test_key_without_events_scope_is_403(make_api_client: Any) -> None:
    client = make_api_client("recommend", "catalog")
    response = post(client, event())
    assert response.status_code == 403
    assert response.json() == {"detail": "This API key lacks the 'events' scope."}
    assert client.post("/v1/sessions/s1/merge", {"customer_id": "C1"}, format="json").status_code == 403


# --- Attribution --------------------------------------------------------------------------------------------


def test_request_id_is_stored_and_returned_by_the_selector(api: APIClient, items: None) -> None:
    body = {
        "events": [
            event(event_id="v", item_id="I1", request_id="rec-1", occurred_at=at(3)),
            event(event_id="p", item_id="I1", type="purchase", value=1, request_id="rec-1", occurred_at=at(1)),
            event(event_id="other", item_id="I2", request_id="rec-2"),
            event(event_id="none", item_id="I3"),
        ]
    }
    post(api, body)
    attributed = selectors.interactions_for_request("rec-1")
    assert [(a.event_id, a.item_id, a.customer_id, a.type) for a in attributed] == [
        ("v", "I1", "C1", Interaction.Type.VIEW),
        ("p", "I1", "C1", Interaction.Type.PURCHASE),
    ]
    assert selectors.interactions_for_request("") == []


# --- Session merge ------------------------------------------------------------------------------------------


def test_session_merge_gives_the_customer_the_session_in_postgres_and_redis(api: APIClient, items: None) -> None:
    post(api, event(event_id="mine", customer_id="C9", item_id="I3", occurred_at=at(30)))
    anonymous = [
        event(event_id=f"anon-{i}", customer_id=..., session_id="S1", item_id=sku, occurred_at=at(20 - i))
        for i, sku in enumerate(["I1", "I2"])
    ]
    post(api, {"events": anonymous})
    version_before = selectors.cache_version("C9")

    response = api.post("/v1/sessions/S1/merge", {"customer_id": "C9"}, format="json")
    assert response.status_code == 200
    assert response.json() == {"session_id": "S1", "customer_id": "C9", "interactions_merged": 2}
    owners = set(Interaction.objects.filter(session_id="S1").values_list("customer__external_id", flat=True))
    assert owners == {"C9"}
    history = [(entry.item_pk, entry.type) for entry in selectors.recent_history("C9")]
    item_pk = {sku: ItemFactory(external_id=sku).pk for sku in ("I1", "I2", "I3")}
    assert history == [(item_pk["I2"], 1), (item_pk["I1"], 1), (item_pk["I3"], 1)]
    assert selectors.recent_history("s:S1") == []
    assert selectors.cache_version("C9") > version_before

    again = api.post("/v1/sessions/S1/merge", {"customer_id": "C9"}, format="json")
    assert again.json()["interactions_merged"] == 0
    assert [(entry.item_pk, entry.type) for entry in selectors.recent_history("C9")] == history


def test_session_merge_creates_the_customer_and_validates(api: APIClient) -> None:
    assert api.post("/v1/sessions/S1/merge", {"customer_id": "NEW"}, format="json").status_code == 200
    assert Customer.objects.filter(external_id="NEW").exists()
    response = api.post("/v1/sessions/S1/merge", {}, format="json")
    assert response.status_code == 400
    assert response.json() == {"customer_id": ["This field is required."]}
    response = api.post(f"/v1/sessions/{'s' * 101}/merge", {"customer_id": "C1"}, format="json")
    assert response.json() == {"session_id": ["Longer than 100 characters."]}


# --- Redis down ---------------------------------------------------------------------------------------------


@pytest.fixture
def redis_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Every online-state call fails fast, as with a dead Redis (the auth throttle fails open)."""
    dead = redis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"), socket_timeout=0.1)
    monkeypatch.setattr(redis_client, "get", lambda: dead)


def test_redis_outage_does_not_fail_an_accepted_event(api: APIClient, items: None, redis_down: None) -> None:
    errors = REGISTRY.get_sample_value("recsys_online_state_errors_total") or 0.0
    response = post(api, {"events": [event(event_id="e1"), event(event_id="e2", type="click", occurred_at=at(5))]})
    assert response.status_code == 202
    assert response.json()["accepted"] == 2
    assert Interaction.objects.count() == 2
    assert REGISTRY.get_sample_value("recsys_online_state_errors_total") == errors + 1
    # Reads fall back to Postgres for the history, newest first.
    assert [entry.type for entry in selectors.recent_history("C1")] == [Interaction.Type.CLICK, Interaction.Type.VIEW]
