"""Issue 13: items a customer already bought or rated stay out of their personal lists over their whole history,
not only among the latest 200 events the online history keeps (events.keys.had), on the real servers and a trained
model: served from Redis, after a rebuild from Postgres, from Postgres when the online state is lost, after a
session merge; and erasure deletes the had set."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from catalog.models import Item
from events import keys
from events import online as events_online
from events.features import PURCHASE, RATING, VIEW
from events.services import online_state_rebuild
from kernel import redis_client
from ranking import serving
from ranking.pipeline import offline as pipeline_offline
from tests.worlds import trained_world_fixtures

CLUSTERS = (("wool", "scarf"), ("ceramic", "mug"), ("garden", "seed"), ("silver", "ring"))
BOUGHT = [f"scarf-{i}" for i in range(6)]  # bought early, 25 times each: 150 purchases
RATED = ["mug-0", "mug-1"]  # rated early
VIEWED = [f"scarf-{i}" for i in range(6, 12)]  # then 200 views of the rest of the cluster


world, _fresh = trained_world_fixtures(clusters=CLUSTERS, per_cluster=12, seed=11, rebuild_online_state=True)


def _owner_fields(owner: str) -> dict[str, str]:
    return {"session_id": owner[2:]} if owner.startswith("s:") else {"customer_id": owner}


def _send_long_history(api: APIClient, owner: str) -> None:
    """150 purchases and 2 ratings, then 200 views after them: the history keeps only the views."""
    start = timezone.now() - dt.timedelta(days=10)
    events: list[dict[str, Any]] = []

    def add(item: str, type_: str, **extra: Any) -> None:
        n = len(events)
        occurred = start + dt.timedelta(minutes=n)
        events.append({
            "event_id": f"had-{owner}-{n}", "item_id": item, "type": type_, "occurred_at": occurred.isoformat(),
            **_owner_fields(owner), **extra,
        })  # fmt: skip

    for n in range(150):
        add(BOUGHT[n % len(BOUGHT)], "purchase")
    for item in RATED:
        add(item, "rating", value=5)
    for n in range(200):
        add(VIEWED[n % len(VIEWED)], "view")
    response = api.post("/v1/events", {"events": events}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == len(events), response.content


def _ids(body: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def _recs(api: APIClient, **params: Any) -> dict[str, Any]:
    response = api.get("/v1/recommendations", params)
    assert response.status_code == 200, response.content
    return response.json()


def _assert_history_holds_only_the_views(owner: str) -> None:
    """The precondition of every test here: the history alone no longer knows what was bought or rated."""
    history = events_online.read_history(owner, limit=events_online.HISTORY_LENGTH)
    assert len(history) == events_online.HISTORY_LENGTH
    assert {row.type for row in history} == {VIEW}


def _had_pairs(owner: str) -> set[tuple[str, int]]:
    pks, types = events_online.read_had(owner)
    external = dict(Item.objects.values_list("pk", "external_id"))
    return {(external[pk], type_) for pk, type_ in zip(pks.tolist(), types.tolist(), strict=True)}


EXPECTED_HAD = {(item, PURCHASE) for item in BOUGHT} | {(item, RATING) for item in RATED}


def _assert_none_had(ids: list[str]) -> None:
    assert ids, "an empty list proves nothing"
    assert not set(ids) & {*BOUGHT, *RATED}, ids


@pytest.mark.django_db
def test_items_bought_or_rated_before_the_latest_200_events_never_come_back(
    api: APIClient, admin_api: APIClient
) -> None:
    _send_long_history(api, "hx-1")
    _assert_history_holds_only_the_views("hx-1")
    assert _had_pairs("hx-1") == EXPECTED_HAD

    debug = _recs(admin_api, customer_id="hx-1", count=40, debug="true")
    cached = [_recs(api, customer_id="hx-1", count=40) for _ in range(2)]  # a miss, then the list cache

    assert debug["degraded"] is False
    assert debug["debug"]["history_source"] == "redis"
    assert debug["debug"]["history_length"] == 200
    assert debug["debug"]["had"] == len(EXPECTED_HAD)
    for body in (debug, *cached):
        _assert_none_had(_ids(body))
    # The viewed items of the same cluster are still recommended (views are no "already had").
    assert set(_ids(debug)) & set(VIEWED)


@pytest.mark.django_db
def test_the_had_items_are_rebuilt_from_postgres_after_redis_lost_them(api: APIClient, admin_api: APIClient) -> None:
    _send_long_history(api, "hx-2")
    redis_client.get().flushdb()

    summary = online_state_rebuild()
    serving.clear_caches()

    assert summary.had_items >= len(EXPECTED_HAD)
    _assert_history_holds_only_the_views("hx-2")
    assert _had_pairs("hx-2") == EXPECTED_HAD
    body = _recs(admin_api, customer_id="hx-2", count=40, debug="true")
    assert body["degraded"] is False
    _assert_none_had(_ids(body))


@pytest.mark.django_db
def test_the_postgres_degraded_path_leaves_out_the_whole_historys_had_items(
    api: APIClient, admin_api: APIClient
) -> None:
    _send_long_history(api, "hx-3")
    redis_client.get().flushdb()  # the online state is lost: serving reads Postgres until the rebuild
    serving.clear_caches()

    result = serving.recommend(serving.RecommendRequest(customer_id="hx-3", count=40, log_impression=False))
    body = _recs(admin_api, customer_id="hx-3", count=40, debug="true")

    assert result.degraded
    _assert_none_had([item.item_id for item in result.items])
    assert body["degraded"] is True
    assert body["debug"]["history_source"] == "postgres"
    assert body["debug"]["history_length"] == 200
    assert body["debug"]["had"] == len(EXPECTED_HAD)
    _assert_none_had(_ids(body))


@pytest.mark.django_db
def test_a_sessions_had_items_follow_it_into_the_customer_on_merge(api: APIClient, admin_api: APIClient) -> None:
    _send_long_history(api, "s:hs-4")
    response = api.post("/v1/sessions/hs-4/merge", {"customer_id": "hx-4"}, format="json")
    assert response.status_code == 200, response.content

    _assert_history_holds_only_the_views("hx-4")
    assert _had_pairs("hx-4") == EXPECTED_HAD
    assert not redis_client.get().exists(keys.had("s:hs-4"))
    _assert_none_had(_ids(_recs(api, customer_id="hx-4", count=40)))
    # Browsing on in the same session after login: both owners' state, still none of it.
    _assert_none_had(_ids(_recs(admin_api, customer_id="hx-4", session_id="hs-4", count=40, debug="true")))


@pytest.mark.django_db
def test_erasure_deletes_the_had_set(api: APIClient, admin_api: APIClient) -> None:
    _send_long_history(api, "hx-5")
    assert redis_client.get().exists(keys.had("hx-5"))
    export = admin_api.get("/v1/customers/hx-5/export")
    assert export.status_code == 200
    body = json.loads(b"".join(export.streaming_content))
    assert sum(row["type"] == "purchase" for row in body["interactions"]) == 150
    assert {(row["item_id"], row["type"]) for row in body["online"]["had"]} == {
        *((item, "purchase") for item in BOUGHT), *((item, "rating") for item in RATED),
    }  # fmt: skip

    response = admin_api.delete("/v1/customers/hx-5")

    assert response.status_code in (200, 202, 204), response.content
    assert not redis_client.get().exists(keys.had("hx-5"))


def test_the_offline_pipeline_keeps_what_the_online_had_set_keeps() -> None:
    """ranking.pipeline.offline imports no Django app, so it names the had set's types and bound itself."""
    assert pipeline_offline.HAD_TYPES == events_online.HAD_TYPES
    assert pipeline_offline.HAD_LENGTH == events_online.HAD_LENGTH


@pytest.mark.django_db
def test_an_install_upgraded_from_the_format_without_had_sets_serves_from_postgres_until_rebuilt(
    api: APIClient, admin_api: APIClient
) -> None:
    _send_long_history(api, "hx-6")
    # What an install of the previous format holds: its marker (v3), histories, no had sets.
    client = redis_client.get()
    client.delete(keys.ONLINE_STATE_COMPLETE, keys.had("hx-6"))
    client.set("online:{online}:complete:v3", str(time.time()))
    serving.clear_caches()

    before = _recs(admin_api, customer_id="hx-6", count=40, debug="true")
    assert before["degraded"] is True  # no marker of the new format: the Postgres path, had items included
    assert before["debug"]["history_source"] == "postgres"
    _assert_none_had(_ids(before))

    online_state_rebuild()
    serving.clear_caches()

    assert not client.exists("online:{online}:complete:v3")
    assert _had_pairs("hx-6") == EXPECTED_HAD
    after = _recs(admin_api, customer_id="hx-6", count=40, debug="true")
    assert after["degraded"] is False
    _assert_none_had(_ids(after))
