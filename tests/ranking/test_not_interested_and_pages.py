"""Issue 16 items 2-4 on the real servers and a trained model: "not interested" (the dismiss event: never again,
look-alikes demoted, a negative signal for training, export/erasure/rebuild), a whole page without repeats and
``exclude_request_ids``, and freshness measured (the event-to-list histogram and the synthetic probe)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from catalog.models import Item
from events import keys
from events import online as events_online
from events.features import DISMISS, PURCHASE, VIEW
from events.models import Interaction
from events.services import online_state_rebuild
from kernel import redis_client
from ranking import dataset, freshness, retrieval, serving
from ranking.artifacts import get_active_model
from ranking.pipeline import online, stages
from ranking.pipeline.state import History, RequestState
from ranking.shown import SHOWN
from tests.worlds import trained_world_fixtures

CLUSTERS = (("wool", "scarf"), ("ceramic", "mug"), ("garden", "seed"), ("silver", "ring"))


world, _fresh = trained_world_fixtures(clusters=CLUSTERS, per_cluster=12, seed=5, rebuild_online_state=True)


def _send(api: APIClient, type_: str = "view", **fields: str | float) -> None:
    response = api.post("/v1/events", {"type": type_, **fields}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 1, response.content


def _ids(body: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def _recs(api: APIClient, **params: Any) -> dict[str, Any]:
    response = api.get("/v1/recommendations", params)
    assert response.status_code == 200, response.content
    return response.json()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- "Not interested" -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_dismissed_item_never_reappears_across_1000_requests_with_cache_and_without(api: APIClient) -> None:
    _send(api, customer_id="u0-0", item_id="scarf-3")
    _send(api, session_id="anon-1", item_id="mug-2")
    before = _recs(api, customer_id="u0-0", count=20)
    dismissed = _ids(before)[0]
    _send(api, "dismiss", customer_id="u0-0", item_id=dismissed)
    before_anon = _recs(api, session_id="anon-1", count=20)
    dismissed_anon = _ids(before_anon)[0]
    _send(api, "dismiss", session_id="anon-1", item_id=dismissed_anon)

    tiers: dict[str, int] = {}
    shown = 0
    for n in range(1000):
        surface = ("home", "item", "cart")[n % 3]
        count = 5 + n % 36
        # Every other request bypasses the list cache (debug), the others go through it (hits after the first).
        request = serving.RecommendRequest(
            customer_id="u0-0", session_id="anon-1" if n % 4 == 3 else "", surface=surface, count=count,
            debug=n % 2 == 1, context_item_id="scarf-3" if n % 5 == 0 else "",
        )  # fmt: skip
        result = serving.recommend(request)
        tiers[result.cache] = tiers.get(result.cache, 0) + 1
        ids = [item.item_id for item in result.items]
        shown += len(ids)
        assert dismissed not in ids, (n, request)
        if request.session_id:  # the session's dismissals count for the customer browsing in it
            assert dismissed_anon not in ids, (n, request)
        anon = serving.recommend(serving.RecommendRequest(session_id="anon-1", count=count, debug=n % 2 == 1))
        assert dismissed_anon not in [item.item_id for item in anon.items]
    assert tiers.get("bypass", 0) == 500
    assert tiers.get("l1", 0) + tiers.get("l2", 0) > 300  # the cached path was really exercised
    assert shown > 10_000
    # Through the API as well, and in "because you viewed".
    assert dismissed not in _ids(_recs(api, customer_id="u0-0", count=40))
    groups = api.get("/v1/customers/u0-0/because-you-viewed", {"count": 20}).json()["groups"]
    assert all(dismissed not in [item["item_id"] for item in group["items"]] for group in groups)


@pytest.mark.django_db
def test_a_viewed_item_dismissed_afterwards_anchors_nothing_and_names_no_reason(api: APIClient) -> None:
    """A customer who viewed three items and then said "not interested" to the latest still got "Because you viewed
    <it>" lists led by its neighbours (found by a fifth tester, 5 December): the view outlived the dismissal. Now
    every event of a dismissed item leaves the history, as training drops every event of a dismissed pair."""
    for item in ("mug-1", "seed-2", "scarf-4"):
        _send(api, customer_id="u2-5", item_id=item)
    title = Item.objects.get(external_id="scarf-4").title

    def naming(body: dict[str, Any]) -> list[str]:
        return [item["item_id"] for item in body["items"] if title in item["reason"]["text"]]

    def anchors() -> list[str]:
        response = api.get("/v1/customers/u2-5/because-you-viewed", {"count": 5, "groups": 3})
        assert response.status_code == 200
        return [group["anchor_item_id"] for group in response.json()["groups"]]

    def page_anchors() -> list[str]:
        page = _page(api, customer_id="u2-5", widgets=[{"kind": "because_you_viewed", "count": 5, "groups": 3}])
        return [group["anchor_item_id"] for group in page["widgets"][0]["groups"]]

    assert naming(_recs(api, customer_id="u2-5", count=30))  # before: the latest view leads
    assert anchors()[0] == "scarf-4"
    assert page_anchors()[0] == "scarf-4"
    _send(api, "dismiss", customer_id="u2-5", item_id="scarf-4")
    after = _recs(api, customer_id="u2-5", count=30)
    assert naming(after) == []
    assert after["items"]  # the other views still personalise the list
    assert anchors()
    assert "scarf-4" not in anchors()
    assert "scarf-4" not in page_anchors()
    # Looked at again: still dismissed (it never comes back to this customer), so still no anchor.
    _send(api, customer_id="u2-5", item_id="scarf-4")
    assert "scarf-4" not in anchors()
    assert naming(_recs(api, customer_id="u2-5", count=30)) == []


def test_without_items_drops_every_event_of_those_items() -> None:
    history = History(
        np.array([7, 3, 7, 5], np.int64), np.array([VIEW, VIEW, PURCHASE, VIEW], np.int64),
        np.array([400.0, 300.0, 200.0, 100.0]),
    )  # fmt: skip
    kept = history.without_items(np.array([7, 9], np.int64))
    assert kept.pks.tolist() == [3, 5]
    assert kept.ts.tolist() == [300.0, 100.0]
    assert history.without_items(np.empty(0, np.int64)) is history
    assert history.without_items(np.array([9], np.int64)) is history


@pytest.mark.django_db
def test_dismissals_survive_a_lost_online_state_and_are_rebuilt(api: APIClient) -> None:
    _send(api, customer_id="u1-0", item_id="mug-1")
    dismissed = _ids(_recs(api, customer_id="u1-0", count=10))[0]
    _send(api, "dismiss", customer_id="u1-0", item_id=dismissed)
    redis_client.get().flushdb()  # Redis lost everything: serving reads Postgres, including the dismissals
    serving.clear_caches()
    degraded = serving.recommend(serving.RecommendRequest(customer_id="u1-0", count=40, log_impression=False))
    assert degraded.degraded
    assert dismissed not in [item.item_id for item in degraded.items]
    online_state_rebuild()
    pks, _ = events_online.read_dismissed("u1-0")
    assert pks.tolist() == [Item.objects.get(external_id=dismissed).pk]
    # Dismissals are not history: nothing of it in hist:, no affinity from it.
    history = events_online.read_history("u1-0", limit=200)
    assert all(row.type != DISMISS for row in history)


@pytest.mark.django_db
def test_dismiss_is_in_the_export_and_gone_after_erasure(api: APIClient, admin_api: APIClient) -> None:
    _send(api, "dismiss", customer_id="u2-0", item_id="seed-4")
    response = admin_api.get("/v1/customers/u2-0/export")
    assert response.status_code == 200
    body = json.loads(b"".join(response.streaming_content))
    assert [row["item_id"] for row in body["online"]["dismissed"]] == ["seed-4"]
    assert any(row["type"] == "dismiss" and row["item_id"] == "seed-4" for row in body["interactions"])
    response = admin_api.delete("/v1/customers/u2-0")
    assert response.status_code in (200, 202, 204), response.content
    assert not redis_client.get().exists(keys.dismissed("u2-0"))
    assert not Interaction.objects.filter(type=Interaction.Type.DISMISS, item__external_id="seed-4").exists()


@pytest.mark.django_db
def test_a_dismissed_items_neighbours_are_demoted_for_a_while(world: dict[str, Any]) -> None:
    model = get_active_model()
    assert model is not None
    dismissed_pk = Item.objects.get(external_id="ring-2").pk
    neighbours_idx = np.asarray(model.array("knn_idx"))[model.item_index(np.array([dismissed_pk]))[0]]
    neighbours = model.item_ids[neighbours_idx[neighbours_idx >= 0][: stages.DISMISS_NEIGHBOURS]]
    others = np.setdiff1d(model.item_ids, np.append(neighbours, dismissed_pk))[:5]
    cand = np.sort(np.concatenate([neighbours, others]))
    hits = {"popular": retrieval.SourceHits(cand, np.ones(cand.size, np.float32), np.full(cand.size, -1))}
    now = 1_800_000_000.0

    def penalty(age_days: float) -> np.ndarray:
        state = RequestState(surface="home", count=10, now=now)
        state.candidates = retrieval.merge(hits)
        state.dismissed_pks = np.array([dismissed_pk], np.int64)
        state.dismissed_ts = np.array([now - age_days * 86_400])
        return stages.dismissal_penalty(state, model)

    fresh = penalty(0)
    is_neighbour = np.isin(cand, neighbours)
    assert np.allclose(fresh[is_neighbour], 1.0)
    assert np.all(fresh[~is_neighbour] == 0.0)
    assert np.allclose(penalty(3)[is_neighbour], 0.5)  # halves every three days
    assert penalty(30)[is_neighbour].max() < 0.001

    state = RequestState(surface="home", count=10, now=now)
    state.candidates = retrieval.merge(hits)
    state.dismissed_pks, state.dismissed_ts = np.array([dismissed_pk], np.int64), np.array([now])
    state.scores = np.linspace(1.0, 2.0, cand.size).astype(np.float32)
    before = state.scores.copy()
    stages.demote_dismissed(state, model)
    assert np.all(state.scores[is_neighbour] < before[is_neighbour] - 0.49)
    assert np.array_equal(state.scores[~is_neighbour], before[~is_neighbour])


def test_training_drops_dismissed_pairs_from_the_positives() -> None:
    items = dataset.ItemTable(np.array([10, 11, 12], np.int64), np.zeros(3, np.int32), ["a", "b", "c"])
    rows = [  # customer, item, type, session
        (1, 10, VIEW, "s1"), (1, 10, PURCHASE, "s1"), (1, 10, DISMISS, "s2"),  # customer 1 dismissed 10
        (1, 11, PURCHASE, "s1"), (2, 10, PURCHASE, "s3"),  # customer 2 still likes 10
        (-1, 12, VIEW, "anon"), (-1, 12, DISMISS, "anon"), (-1, 12, VIEW, "other"),  # one session dismissed 12
    ]  # fmt: skip
    customer, item, type_, session = (list(column) for column in zip(*rows, strict=True))
    log = dataset.log_from_arrays(
        customer=customer, item=item, type_=type_, value=np.full(len(rows), np.nan),
        ts=np.arange(len(rows), dtype=float), session=np.array(session, dtype=object), items=items,
    )  # fmt: skip
    kept = sorted(zip(log.user_ids[log.user].tolist(), log.item.tolist(), log.type.tolist(), strict=True))
    assert DISMISS not in log.type.tolist()
    # Customer 1 keeps item 11 only; customer 2 keeps 10; the other anonymous session keeps its view of 12.
    assert (1, 0, PURCHASE) not in kept
    assert (1, 0, VIEW) not in kept
    assert (1, 1, PURCHASE) in kept
    assert (2, 0, PURCHASE) in kept
    anonymous = log.item[log.user < 0].tolist()
    assert anonymous == [2]


@pytest.mark.django_db
def test_dismiss_needs_an_item(api: APIClient) -> None:
    response = api.post("/v1/events", {"customer_id": "x", "type": "dismiss"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"item_id": ["This field is required."]}


# --- A whole page -------------------------------------------------------------------------------------------------


def _page(api: APIClient, **body: Any) -> dict[str, Any]:
    response = api.post("/v1/pages", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _page_ids(page: dict[str, Any]) -> list[str]:
    ids = []
    for widget in page["widgets"]:
        ids += [item["item_id"] for item in widget["items"]]
        ids += [item["item_id"] for group in widget["groups"] for item in group["items"]]
    return ids


@pytest.mark.django_db
def test_a_page_answers_three_widgets_without_repeats_in_one_round_of_shared_work(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for item in ("scarf-1", "scarf-2", "mug-5"):
        _send(api, customer_id="u0-1", item_id=item)
    calls: dict[str, int] = {"owner_state": 0, "user_vector": 0}

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(online, "owner_state", counted("owner_state", online.owner_state))
    monkeypatch.setattr(stages, "user_vector", counted("user_vector", stages.user_vector))
    page = _page(
        api, customer_id="u0-1", context_item_id="scarf-1",
        widgets=[
            {"kind": "recommendations", "surface": "home", "count": 10},
            {"kind": "because_you_viewed", "count": 6, "groups": 2},
            # Of an item of another cluster: u0-1 bought scarves, which a personal page's similar items leave out.
            {"kind": "similar", "item_id": "mug-5", "count": 8},
        ],
    )  # fmt: skip
    assert calls == {"owner_state": 1, "user_vector": 1}
    kinds = [widget["kind"] for widget in page["widgets"]]
    assert kinds == ["recommendations", "because_you_viewed", "similar"]
    ids = _page_ids(page)
    assert len(ids) == len(set(ids)), ids
    assert len(page["widgets"][0]["items"]) == 10
    assert page["widgets"][1]["groups"]
    assert page["widgets"][2]["items"]
    assert "scarf-1" not in ids  # the item on the page is not recommended on it
    request_ids = {widget["request_id"] for widget in page["widgets"]}
    assert len(request_ids) == 3
    reasons = {item["reason"]["code"] for item in page["widgets"][2]["items"]}
    assert reasons <= {"similar", "similar_content", "popular_in_category", "featured"}
    # The next page of the session leaves out everything this one showed.
    again = _page(
        api, customer_id="u0-1", context_item_id="scarf-1", exclude_request_ids=sorted(request_ids),
        widgets=[{"kind": "recommendations", "count": 10}, {"kind": "similar", "count": 5}],
    )  # fmt: skip
    assert not set(_page_ids(again)) & set(ids)


@pytest.mark.django_db
def test_exclude_request_ids_leaves_out_what_earlier_answers_showed_that_owner(api: APIClient) -> None:
    _send(api, session_id="visit-9", item_id="seed-1")
    first = _recs(api, session_id="visit-9", count=8)
    SHOWN.flush()  # what the background loop does within 50 ms: the next read finds it in Redis
    shown = redis_client.get().hget(keys.shown("s:visit-9"), first["request_id"])
    assert sorted(shown.split(b",")) == sorted(str(Item.objects.get(external_id=i).pk).encode() for i in _ids(first))
    second = _recs(api, session_id="visit-9", count=8, exclude_request_ids=first["request_id"])
    # The third asks right away: the second answer is still pending in this process, and is read from there.
    assert len(second["items"]) == 8
    assert not set(_ids(first)) & set(_ids(second))
    third = _recs(
        api, session_id="visit-9", count=8, exclude_request_ids=f"{first['request_id']},{second['request_id']}"
    )
    assert not set(_ids(third)) & (set(_ids(first)) | set(_ids(second)))
    # Another owner cannot use them, and unknown ids leave nothing out.
    other = _recs(api, session_id="visit-10", count=8)
    other_excluding = _recs(api, session_id="visit-10", count=8, exclude_request_ids=first["request_id"])
    assert _ids(other_excluding) == _ids(other)


@pytest.mark.django_db
@pytest.mark.parametrize("flush", [True, False], ids=["in-redis", "pending-in-process"])
def test_a_visitor_who_logs_in_still_leaves_out_what_the_visit_was_shown(api: APIClient, flush: bool) -> None:
    """ "Load more" after a login repeated the first answer: what the session was shown was read under the first
    owner of the request only (the customer), and the merge left it with the session (a tenth tester, 6 December).
    A request naming both reads both; a merge copies it to the customer."""
    _send(api, session_id="visit-42", item_id="seed-1")
    first = _recs(api, session_id="visit-42", count=8)
    if flush:
        SHOWN.flush()
    both = _recs(api, customer_id="login-42", session_id="visit-42", count=8, exclude_request_ids=first["request_id"])
    assert len(both["items"]) == 8
    assert not set(_ids(first)) & set(_ids(both))
    page = _page(
        api, customer_id="login-42", session_id="visit-42", exclude_request_ids=[first["request_id"]],
        widgets=[{"kind": "recommendations", "count": 8}],
    )  # fmt: skip
    assert not set(_page_ids(page)) & set(_ids(first))
    SHOWN.flush()
    merged = api.post("/v1/sessions/visit-42/merge", {"customer_id": "login-42"}, format="json")
    assert merged.status_code == 200, merged.content
    excluded = {first["request_id"], both["request_id"]}
    alone = _recs(api, customer_id="login-42", count=8, exclude_request_ids=",".join(sorted(excluded)))
    assert len(alone["items"]) == 8
    assert not set(_ids(alone)) & (set(_ids(first)) | set(_ids(both)))


@pytest.mark.django_db
def test_a_personal_pages_similar_items_leave_out_what_the_customer_bought(api: APIClient) -> None:
    """A customer who bought an item found it among the similar items of the page whose because-you-viewed row said
    "Because you bought" it (a tenth tester, 6 December). On a personal page the similar widget leaves out what the
    owner has, as the page's other lists do; without an owner it lists the item's neighbours as before."""
    widgets = [{"kind": "similar", "item_id": "mug-1", "count": 11}]
    anonymous = _page_ids(_page(api, widgets=widgets))
    bought = anonymous[0]
    _send(api, "purchase", customer_id="sim-buyer", item_id=bought, value=1)
    personal = _page_ids(_page(api, customer_id="sim-buyer", widgets=widgets))
    assert bought not in personal
    assert personal
    assert _page_ids(_page(api, widgets=widgets)) == anonymous


@pytest.mark.django_db
def test_page_and_exclude_request_ids_validation_names_the_field(api: APIClient) -> None:
    response = api.post("/v1/pages", {"widgets": [{"kind": "carousel"}]}, format="json")
    assert response.status_code == 400
    assert "widgets" in response.content.decode()
    response = api.post("/v1/pages", {"widgets": []}, format="json")
    assert response.status_code == 400
    response = api.post("/v1/pages", {"widgets": [{"kind": "similar"}]}, format="json")
    assert response.status_code == 400
    assert "item_id" in response.content.decode()
    response = api.post(
        "/v1/pages",
        {"widgets": [{"kind": "recommendations"}, {"kind": "similar", "item_id": "no-such"}]},
        format="json",
    )
    assert response.status_code == 400
    # The shape of every widget field's error (DRF's for a list): one entry per widget, the second names item_id.
    assert response.json() == {"widgets": [{}, {"item_id": ["No item with id 'no-such'."]}]}
    response = api.post(
        "/v1/pages",
        {"widgets": [{"kind": "recommendations"}, {"kind": "because_you_viewed", "groups": 6}]},
        format="json",
    )
    assert response.status_code == 400
    assert list(response.json()["widgets"][1]) == ["groups"]
    response = api.get("/v1/recommendations", {"exclude_request_ids": ",".join(str(n) for n in range(30))})
    assert response.status_code == 400
    assert "exclude_request_ids" in response.content.decode()
    response = api.post("/v1/pages", "[1]", content_type="application/json")
    assert response.status_code == 400
    # Ids are JSON strings, as in the events API: a number is refused by name, not coerced (found 5 December).
    for body, field in (
        ({"customer_id": 17850, "widgets": [{"kind": "recommendations"}]}, "customer_id"),
        ({"exclude_request_ids": [1, 2], "widgets": [{"kind": "recommendations"}]}, "exclude_request_ids"),
        ({"widgets": [{"kind": "recommendations", "category": 7}]}, "category"),
    ):
        response = api.post("/v1/pages", body, format="json")
        assert response.status_code == 400, body
        assert field in response.content.decode(), response.content
        assert "must be a string" in response.content.decode().lower(), response.content
    # and, like every body id, surrounding whitespace is stripped; only whitespace means none
    response = api.post(
        "/v1/pages", {"customer_id": "  ", "session_id": " s-1 ", "widgets": [{"kind": "recommendations"}]},
        format="json",
    )  # fmt: skip
    assert response.status_code == 200, response.content


# --- Freshness ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_first_list_after_an_event_records_its_wait_once(api: APIClient) -> None:
    count = _sample("recsys_event_to_list_seconds_count", source="traffic")
    waited = _sample("recsys_event_to_list_seconds_sum", source="traffic")
    _send(api, customer_id="u3-0", item_id="ring-1")
    assert redis_client.get().exists(keys.arrival("u3-0"))
    _recs(api, customer_id="u3-0")
    assert _sample("recsys_event_to_list_seconds_count", source="traffic") == count + 1
    assert not redis_client.get().exists(keys.arrival("u3-0"))
    _recs(api, customer_id="u3-0", count=5)  # nothing new to reflect
    assert _sample("recsys_event_to_list_seconds_count", source="traffic") == count + 1
    # Two events before the next list: one observation, from the older event's arrival.
    _send(api, customer_id="u3-0", item_id="ring-2")
    _send(api, customer_id="u3-0", item_id="ring-3")
    _recs(api, customer_id="u3-0")
    assert _sample("recsys_event_to_list_seconds_count", source="traffic") == count + 2
    assert _sample("recsys_event_to_list_seconds_sum", source="traffic") - waited < 60


@pytest.mark.django_db
def test_the_freshness_probe_sees_its_event_and_leaves_nothing_behind(api: APIClient) -> None:
    interactions = Interaction.objects.count()
    traffic = _sample("recsys_recommendation_requests_total", endpoint="recommendations", surface="probe",
                      variant="-", cache="miss")  # fmt: skip
    ok = _sample("recsys_freshness_probe_total", result="ok")
    assert freshness.freshness_probe() == "ok"
    assert freshness.freshness_probe() == "ok"  # again: the previous probe's dismissal was forgotten
    assert _sample("recsys_freshness_probe_total", result="ok") == ok + 2
    assert _sample("recsys_event_to_list_seconds_count", source="probe") >= 2
    owner = keys.owner_for(customer_id="", session_id=keys.PROBE_SESSION_ID)
    client = redis_client.get()
    assert not client.exists(keys.history(owner), keys.dismissed(owner), keys.arrival(owner), keys.shown(owner))
    assert Interaction.objects.count() == interactions  # never in Postgres, so never in training
    assert _sample("recsys_recommendation_requests_total", endpoint="recommendations", surface="probe",
                   variant="-", cache="miss") == traffic  # fmt: skip
    # No client can name the probe's session.
    response = api.post(
        "/v1/events", {"session_id": keys.PROBE_SESSION_ID, "item_id": "ring-1", "type": "view"}, format="json"
    )
    assert response.status_code == 400
