"""Issue 14, the state side: each attack of docs/reliability.md "State, identity and readiness", replayed against
the real Postgres, Redis and (where it matters) a real Celery worker.

Rows: identity namespaces in Redis, honest readiness, bounded metric labels, reads that never create customers and
erasures that stick, erasure of every cached-list key form, throttling of traffic without a valid key and the admin
login lockout, bounded Redis key growth.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from catalog.erasure import id_hash
from catalog.models import Customer, ErasedCustomer
from events import keys, online, selectors
from events.models import Interaction
from events.services import interactions_import, online_state_rebuild
from experiments.models import Impression
from experiments.services import impressions_flush
from kernel import localservices, redis_client, throttling
from privacy.models import ErasureRecord
from ranking import serving
from recsys import health
from recsys.tasks import heartbeat
from tests.factories import CategoryFactory, ItemFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def items() -> list[Any]:
    category = CategoryFactory(external_id="cat-1")
    return [ItemFactory(external_id=f"sku-{n}", category=category) for n in range(6)]


def _event(event_id: str, item: str, *, customer_id: str = "", session_id: str = "", kind: str = "view") -> dict:
    event: dict[str, Any] = {"event_id": event_id, "item_id": item, "type": kind}
    if customer_id:
        event["customer_id"] = customer_id
    if session_id:
        event["session_id"] = session_id
    return event


def _send(api: APIClient, *events: dict) -> dict:
    response = api.post("/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 202, response.content
    return response.json()


# --- Row: customer id "s:<session id>" reads, poisons and erases the session's state ---------------------------


def test_a_customer_id_shaped_like_a_session_owner_has_its_own_state(api: APIClient, items: list[Any]) -> None:
    _send(
        api,
        _event("anon-1", "sku-1", session_id="S1"),
        _event("anon-2", "sku-2", session_id="S1"),
        _event("evil-1", "sku-3", customer_id="s:S1"),
    )
    session_owner = keys.owner_for(customer_id="", session_id="S1")
    evil_owner = keys.owner_for(customer_id="s:S1", session_id="")
    assert session_owner == "s:S1"
    assert evil_owner == "c:s:S1"
    assert keys.parse_owner(evil_owner) == ("s:S1", "")
    assert keys.parse_owner(session_owner) == ("", "S1")
    by_pk = {item.pk: item.external_id for item in items}
    assert [by_pk[e.item_pk] for e in selectors.recent_history(session_owner)] == ["sku-2", "sku-1"]
    assert [by_pk[e.item_pk] for e in selectors.recent_history(evil_owner)] == ["sku-3"]
    # The Postgres fallback resolves owners the same way.
    assert [by_pk[e.item_pk] for e in selectors.recent_history_from_db(evil_owner)] == ["sku-3"]

    # Its export holds only its own history...
    export = api.get("/v1/customers/s:S1/export")
    assert export.status_code == 200, export.content
    exported = json.loads(b"".join(export.streaming_content))
    assert [row["item_id"] for row in exported["online"]["history"]] == ["sku-3"]
    # ...and its erasure leaves the session's state alone.
    assert api.delete("/v1/customers/s:S1").status_code in (200, 202, 204)
    assert [by_pk[e.item_pk] for e in selectors.recent_history(session_owner)] == ["sku-2", "sku-1"]
    assert selectors.recent_history(evil_owner) == []

    # A rebuild from Postgres writes the same namespaces (the session's events are still there, the erased
    # customer's are gone).
    _send(api, _event("evil-2", "sku-4", customer_id="c:x"))
    online_state_rebuild()
    assert [by_pk[e.item_pk] for e in selectors.recent_history(session_owner)] == ["sku-2", "sku-1"]
    assert [by_pk[e.item_pk] for e in selectors.recent_history("c:c:x")] == ["sku-4"]
    assert selectors.recent_history("c:x") == []


def test_an_install_upgraded_in_place_rebuilds_its_online_state_in_the_new_format(
    api: APIClient, items: list[Any]
) -> None:
    _send(api, _event("e-1", "sku-1", customer_id="s:S9"))
    # What an install of the previous format holds: the old marker, the customer's history under the bare id.
    client = redis_client.get()
    client.delete(keys.ONLINE_STATE_COMPLETE, keys.history("c:s:S9"))
    client.set("online:complete", str(time.time()))
    client.zadd(keys.history("s:S9"), {"1:1:1": time.time()})
    assert online.read_complete() is False  # serving's lost-state path: reads Postgres, asks for a rebuild
    online_state_rebuild()
    assert online.read_complete() is True
    assert client.exists("online:complete") == 0
    assert selectors.recent_history("s:S9") == []  # the old, colliding key was cleared
    assert [e.item_pk for e in selectors.recent_history("c:s:S9")] == [items[1].pk]


# --- Row: readiness ------------------------------------------------------------------------------------------


@pytest.fixture
def postgres_unreachable(tmp_path: Path) -> Callable[[], AbstractContextManager[None]]:
    """``with postgres_unreachable():`` points this process's connection at an empty directory (no server)."""

    @contextmanager
    def outage() -> Iterator[None]:
        saved = (connection.settings_dict["HOST"], copy.deepcopy(connection.settings_dict["OPTIONS"]))
        connection.close()
        connection.settings_dict["HOST"] = connection.settings_dict["OPTIONS"]["host"] = str(tmp_path)
        try:
            yield
        finally:
            connection.close()
            connection.settings_dict["HOST"], connection.settings_dict["OPTIONS"] = saved

    return outage


def _ready() -> tuple[int, dict[str, Any]]:
    health.reset()
    response = Client().get("/readyz")
    return response.status_code, response.json()


def test_readyz_is_200_without_any_worker_and_reports_the_heartbeat_instead() -> None:
    # No worker runs in this test and no heartbeat was ever stored.
    status, body = _ready()
    assert status == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["worker"] == {"ok": False, "heartbeat_age_seconds": None, "affects_readiness": False}
    text = Client().get("/metrics").content.decode()
    assert "recsys_worker_heartbeat_age_seconds +Inf" in text


def test_the_heartbeat_of_a_real_worker_is_a_metric(celery_worker: object) -> None:
    heartbeat.delay().get(timeout=30)
    status, body = _ready()
    assert status == 200
    assert body["checks"]["worker"]["ok"] is True
    text = Client().get("/metrics").content.decode()
    line = next(row for row in text.splitlines() if row.startswith("recsys_worker_heartbeat_age_seconds "))
    assert 0 <= float(line.split()[1]) < 60


def test_readyz_with_postgres_down_is_degraded_not_out_of_the_pool(
    postgres_unreachable: Callable[[], AbstractContextManager[None]],
) -> None:
    with postgres_unreachable():
        status, body = _ready()
    assert status == 200, body
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["redis"]["ok"] is True


def test_readyz_is_503_only_when_neither_postgres_nor_redis_answers(
    postgres_unreachable: Callable[[], AbstractContextManager[None]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A Redis client for a socket where nothing listens: this process's Redis is down.
    dead = redis.Redis(unix_socket_path=str(tmp_path / "none.sock"), socket_timeout=0.2, socket_connect_timeout=0.2)
    monkeypatch.setattr(redis_client, "_client", dead)
    with postgres_unreachable():
        status, body = _ready()
    assert status == 503, body
    assert body["status"] == "not ready"
    assert body["checks"]["worker"]["affects_readiness"] is False


def test_concurrent_probes_share_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real_check = health.check

    def counted() -> health.Readiness:
        calls.append(time.monotonic())
        time.sleep(0.05)  # a slow dependency: the other probes must not queue behind it
        return real_check()

    monkeypatch.setattr(health, "check", counted)
    health.reset()
    health.current()  # a first result exists
    calls.clear()
    monkeypatch.setattr(health, "READINESS_CACHE_SECONDS", 0.0)  # every probe would like a fresh check
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(health.current().status)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == ["ready"] * 16
    # One probe checked (maybe a second one after it finished); the others answered with the last result.
    assert 1 <= len(calls) <= 3


# --- Row: 100 distinct surfaces -> 1,600 metric series ------------------------------------------------------------


def _surface_labels() -> set[str]:
    return {
        sample.labels["surface"]
        for metric in REGISTRY.collect()
        if metric.name in ("recsys_recommendation_requests", "recsys_recommendation_latency_seconds")
        for sample in metric.samples
        if "surface" in sample.labels
    }


def test_made_up_surfaces_add_no_metric_series(api: APIClient, items: list[Any]) -> None:
    before = _surface_labels()
    for n in range(100):
        assert api.get("/v1/recommendations", {"surface": f"made-up-{n}", "count": 2}).status_code == 200
    assert api.get("/v1/recommendations", {"surface": "home", "count": 2}).status_code == 200
    labels = _surface_labels()
    assert not any(label.startswith("made-up-") for label in labels)
    assert labels - before <= {"other", "home"}
    assert "other" in labels


def _method_labels() -> set[str]:
    return {
        sample.labels["method"]
        for metric in REGISTRY.collect()
        if metric.name.startswith("django_http_")
        for sample in metric.samples
        if "method" in sample.labels
    }


def test_made_up_http_methods_add_no_metric_series(items: list[Any]) -> None:
    """django-prometheus labelled its latency histogram with the raw method: 2,000 made-up methods sent to
    ``/healthz`` (no key needed) grew ``/metrics`` from 38 KB to 2.6 MB (found by a fifth tester, 5 December)."""
    client = Client()
    for n in range(50):
        for path in ("/healthz", "/v1/items/sku-1", "/no/such/page"):
            assert client.generic(f"QAAA{n}", path).status_code < 500
    assert client.get("/healthz").status_code == 200
    labels = _method_labels()
    assert not any(label.startswith("QAAA") for label in labels)
    assert "<invalid method>" in labels
    assert "GET" in labels


def test_quality_gauges_of_made_up_surfaces_are_not_exposed() -> None:
    from kernel.metrics import quality_set

    quality_set({
        "recsys_recommendation_ctr": {
            "surface=home,experiment=all,variant=all": 0.1,
            "surface=made-up-7,experiment=all,variant=all": 0.5,
            "surface=all,experiment=all,variant=all": 0.12,
        },
    })  # fmt: skip
    text = Client().get("/metrics").content.decode()
    assert 'recsys_recommendation_ctr{experiment="all",surface="home",variant="all"} 0.1' in text
    assert 'recsys_recommendation_ctr{experiment="all",surface="all",variant="all"} 0.12' in text
    assert "made-up-7" not in text


# --- Row: a read creates a customer; an erased id comes back -----------------------------------------------------


def test_a_read_for_an_unknown_customer_creates_no_customer(api: APIClient, items: list[Any]) -> None:
    response = api.get("/v1/recommendations", {"customer_id": "ghost", "session_id": "S-ghost", "count": 3})
    assert response.status_code == 200
    impressions_flush()
    assert not Customer.objects.filter(external_id="ghost").exists()
    impression = Impression.objects.get(request_id=response.json()["request_id"])
    assert impression.customer_id is None  # kept, without a customer
    assert impression.session_id == "S-ghost"


def test_an_erased_id_stays_erased(api: APIClient, items: list[Any]) -> None:
    _send(api, _event("e-1", "sku-1", customer_id="alice"))
    assert api.delete("/v1/customers/alice").status_code in (200, 202, 204)
    assert ErasedCustomer.objects.filter(id_hash=id_hash("alice")).exists()
    assert not ErasedCustomer.objects.filter(id_hash__contains="alice").exists()  # hashed, not the id

    # A read right after the erasure: its impression is stored without a customer.
    assert api.get("/v1/recommendations", {"customer_id": "alice", "count": 3}).status_code == 200
    impressions_flush()
    assert not Customer.objects.filter(external_id="alice").exists()

    # Events naming the erased id are refused by field; the others of the batch are stored.
    body = _send(api, _event("e-2", "sku-2", customer_id="alice"), _event("e-3", "sku-2", session_id="S2"))
    assert body["accepted"] == 1
    assert list(body["rejected"][0]["errors"]) == ["customer_id"]
    assert not Interaction.objects.filter(event_id="e-2").exists()
    single = api.post("/v1/events", _event("e-4", "sku-2", customer_id="alice"), format="json")
    assert single.status_code == 400
    assert "customer_id" in single.json()
    # A session merge into the erased id is refused by field, and creates nothing.
    merge = api.post("/v1/sessions/S2/merge", {"customer_id": "alice"}, format="json")
    assert merge.status_code == 400
    assert "customer_id" in merge.json()
    # Nor does a consent change (a storefront syncing opt-outs would otherwise undo erasures; found 5 December).
    for action in ("opt-out", "opt-in"):
        consent = api.post(f"/v1/customers/alice/{action}")
        assert consent.status_code == 400
        assert "erased" in consent.json()["customer_id"][0]
    assert not Customer.objects.filter(external_id="alice").exists()
    assert not selectors.recent_history("alice")

    # Only an explicit PUT creates the customer again; its events are then stored.
    assert api.put("/v1/customers/alice", {"attributes": {}}, format="json").status_code in (200, 201)
    assert _send(api, _event("e-5", "sku-3", customer_id="alice"))["accepted"] == 1


# --- Row: free-form ids and categories bent the list cache's key (found 5 December) ------------------------------


def test_a_customer_id_with_a_colon_cannot_read_another_customers_cached_list(api: APIClient, items: list[Any]) -> None:
    """The key was ``rec:<surface>:<owners>:<count>:<category>:...`` with the ids as they are: customer ``v:7``
    asking for 10 items spelled the key of customer ``v`` asking for 7 in category ``10:-``, and at equal cache
    versions ``v`` was served ``v:7``'s list, reasons naming ``v:7``'s history included."""
    _send(api, *(_event(f"victim-{n}", f"sku-{n}", customer_id="v:7") for n in range(3)))
    _send(api, *(_event(f"other-{n}", f"sku-{n + 3}", customer_id="v") for n in range(3)))
    assert online.read_cache_version("v:7") == online.read_cache_version("v")
    victim = api.get("/v1/recommendations", {"customer_id": "v:7", "count": 10})
    assert victim.status_code == 200
    assert victim.json()["items"]  # a list to leak

    other = api.get("/v1/recommendations", {"customer_id": "v", "count": 7, "category": "10:-"})

    assert other.status_code == 200
    assert other.json()["items"] == []  # no item is in category "10:-"


def test_a_category_named_like_the_keys_placeholder_does_not_replace_the_unfiltered_list(
    api: APIClient, items: list[Any]
) -> None:
    """``category=-`` was keyed as "no category": its empty list was then every anonymous visitor's for a minute."""
    _send(api, *(_event(f"pop-{n}", f"sku-{n}", session_id=f"P{n}") for n in range(6)))
    filtered = api.get("/v1/recommendations", {"surface": "cart", "count": 9, "category": "-"})
    assert filtered.status_code == 200
    assert filtered.json()["items"] == []

    plain = api.get("/v1/recommendations", {"surface": "cart", "count": 9})

    assert plain.status_code == 200
    assert plain.json()["items"]


# --- Row: concurrent merges of one session (found 5 December) ---------------------------------------------------


def _at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads released together; each thread closes its own database connection."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(n: int) -> None:
        try:
            barrier.wait()
            results[n] = calls[n]()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_one_session_merged_into_two_customers_at_once_goes_to_one_of_them(
    make_api_client: Callable[..., APIClient], items: list[Any]
) -> None:
    """Both merges read the session's Redis state before either deleted it: the losing customer (who got no rows
    in Postgres) got the winner's history in Redis, and the winner's erasure left it there."""
    for round_ in range(4):
        session, a, b = f"race-{round_}", f"ra-{round_}", f"rb-{round_}"
        api = make_api_client("events")
        _send(api, *(_event(f"{session}-{n}", f"sku-{n}", session_id=session) for n in range(3)))
        clients = [make_api_client("events") for _ in range(8)]
        url = f"/v1/sessions/{session}/merge"
        responses = _at_once(
            [partial(c.post, url, {"customer_id": a if n % 2 else b}, format="json") for n, c in enumerate(clients)]
        )
        assert {r.status_code for r in responses} == {200}
        owners = {who: Interaction.objects.filter(customer__external_id=who).count() for who in (a, b)}
        winner, loser = (a, b) if owners[a] else (b, a)
        assert (owners[winner], owners[loser]) == (3, 0)
        assert len(selectors.recent_history(winner)) == 3
        assert selectors.recent_history(loser) == []
        assert not selectors.recent_history(f"s:{session}")


# --- Row: a retried event stored several times when the retries overlap (found 5 December) -----------------------


def test_overlapping_retries_of_an_event_store_it_once(
    make_api_client: Callable[..., APIClient], items: list[Any]
) -> None:
    """Without ``occurred_at`` each retry gets its arrival time, so the unique key (event_id, occurred_at) differs
    and only the read-then-insert check stood between them: 16 overlapping copies stored it 1-4 times."""
    clients = [make_api_client("events") for _ in range(16)]
    for round_ in range(3):
        event = {"event_id": f"retry-{round_}", "customer_id": "c-retry", "item_id": "sku-1", "type": "purchase",
                 "value": 3}  # fmt: skip
        responses = _at_once([partial(c.post, "/v1/events", event, format="json") for c in clients])
        assert {r.status_code for r in responses} == {202}
        assert sum(r.json()["accepted"] for r in responses) == 1
        assert Interaction.objects.filter(event_id=f"retry-{round_}").count() == 1
    batch = [_event(f"b-{n}", f"sku-{n % 6}", customer_id="c-batch") for n in range(50)]
    responses = _at_once([partial(_send, c, *batch) for c in clients[:8]])
    assert sum(r["accepted"] for r in responses) == 50
    assert Interaction.objects.filter(event_id__startswith="b-").count() == 50
    # With their own times the copies share the unique key: no turn is taken, and none is stored twice either.
    dated = [{**_event(f"d-{n}", f"sku-{n % 6}", customer_id="c-batch"), "occurred_at": "2026-12-01T10:00:00Z"}
             for n in range(50)]  # fmt: skip
    responses = _at_once([partial(_send, c, *dated) for c in clients[:8]])
    assert sum(r["accepted"] for r in responses) == 50
    assert Interaction.objects.filter(event_id__startswith="d-").count() == 50


def test_an_event_id_used_twice_in_one_import_file_is_stored_once(items: list[Any], tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,customer_id,item_id,type,occurred_at\n"
        "same,c1,sku-1,view,2026-11-01T10:00:00Z\nsame,c1,sku-2,purchase,2026-11-01T11:00:00Z\n"
        "same,c2,sku-3,view,2026-11-02T10:00:00Z\nother,c1,sku-1,view,2026-11-01T10:00:00Z\n"
    )
    summary = interactions_import(path=path)
    assert (summary.stored, summary.duplicates) == (2, 2)
    first = Interaction.objects.get(event_id="same")
    assert (first.item.external_id, first.type) == ("sku-1", Interaction.Type.VIEW)  # the file's first row


# --- Row: erasure after a request naming customer + session leaves the cached list ------------------------------


def test_erasure_deletes_the_cached_list_of_customer_and_session(api: APIClient, items: list[Any]) -> None:
    _send(api, _event("e-1", "sku-1", customer_id="bob"))
    assert api.get("/v1/recommendations", {"customer_id": "bob", "session_id": "S5", "count": 3}).status_code == 200
    client = redis_client.get()
    assert list(client.scan_iter(match="rec:*:bob|s%3AS5:*"))  # the key form of the issue exists
    version_before = online.read_cache_version("bob")
    response = api.delete("/v1/customers/bob")
    assert response.status_code in (200, 202, 204)
    assert not [key for key in client.scan_iter(match="rec:*") if b"bob" in key]
    assert online.read_cache_version("bob") > version_before  # and every form was dead already
    assert ErasureRecord.objects.get().cached_lists_deleted >= 1


# --- Row: unauthenticated traffic never 429; admin login without lockout --------------------------------------


def _clear_of_the_minute_boundary(seconds: float = 10) -> None:
    """Limits count in fixed one-minute windows: start a test that counts when ``seconds`` of the window remain."""
    left = throttling.WINDOW_SECONDS - time.time() % throttling.WINDOW_SECONDS
    if left < seconds:
        time.sleep(left + 0.1)


@override_settings(API_UNAUTHENTICATED_RATE_PER_MINUTE=20)
def test_requests_without_a_valid_key_are_limited_per_address_without_database_lookups(items: list[Any]) -> None:
    limit = settings.API_UNAUTHENTICATED_RATE_PER_MINUTE
    _clear_of_the_minute_boundary()
    statuses = []
    for _ in range(limit):
        bad = APIClient(REMOTE_ADDR="203.0.113.7")
        bad.credentials(HTTP_AUTHORIZATION=f"Bearer {uuid.uuid4().hex}")
        statuses.append(bad.get("/v1/recommendations").status_code)
    assert set(statuses) == {401}
    with CaptureQueriesContext(connection) as queries:
        for _ in range(40):
            bad = APIClient(REMOTE_ADDR="203.0.113.7")
            bad.credentials(HTTP_AUTHORIZATION=f"Bearer {uuid.uuid4().hex}")
            response = bad.get("/v1/recommendations")
            assert response.status_code == 429
            assert 0 < int(response["Retry-After"]) <= 60
            assert "detail" in response.json()
        no_key = APIClient(REMOTE_ADDR="203.0.113.7").get("/v1/recommendations")
        assert no_key.status_code == 429
    assert not [q for q in queries.captured_queries if "recsys_apikey" in q["sql"]]
    # Another address is not affected, nor a valid key from the same address.
    assert APIClient(REMOTE_ADDR="203.0.113.8").get("/v1/recommendations").status_code == 401


@override_settings(API_UNAUTHENTICATED_RATE_PER_MINUTE=20)
def test_x_forwarded_for_is_not_trusted_without_proxies(items: list[Any]) -> None:
    """NUM_PROXIES was None with API_NUM_PROXIES=0, and DRF then took the client address from X-Forwarded-For: a
    client could dodge the limit with a new header per request, or exhaust another address's (found 5 December)."""
    limit = settings.API_UNAUTHENTICATED_RATE_PER_MINUTE
    _clear_of_the_minute_boundary()
    statuses = [
        APIClient(REMOTE_ADDR="203.0.113.20", HTTP_X_FORWARDED_FOR=f"10.9.0.{n}").get("/v1/recommendations").status_code
        for n in range(limit + 5)
    ]
    assert statuses[:limit] == [401] * limit
    assert set(statuses[limit:]) == {429}  # one address, whatever the header says
    # and the address the header named was not charged
    assert APIClient(REMOTE_ADDR="10.9.0.1").get("/v1/recommendations").status_code == 401


def test_a_valid_key_behind_an_abusive_address_still_works_once_verified(
    make_api_client: Callable[..., APIClient], items: list[Any]
) -> None:
    good = make_api_client("recommend")
    good.defaults["REMOTE_ADDR"] = "203.0.113.9"
    _clear_of_the_minute_boundary()
    assert good.get("/v1/recommendations").status_code == 200  # verified (and cached) first
    for _ in range(settings.API_UNAUTHENTICATED_RATE_PER_MINUTE + 5):
        APIClient(REMOTE_ADDR="203.0.113.9").get("/v1/recommendations")
    assert good.get("/v1/recommendations").status_code == 200


def test_admin_login_locks_an_address_out_after_repeated_failures(db: None) -> None:
    User.objects.create_user("merch", password="right-password-123", is_staff=True)
    browser = Client(REMOTE_ADDR="198.51.100.4")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = browser.post("/admin/login/", {"username": "merch", "password": "wrong"})
        assert response.status_code == 200  # the form again, with its error
    # The limit-th failure locks the address out...
    assert browser.post("/admin/login/", {"username": "merch", "password": "wrong"}).status_code == 429
    # ...and then even the right password is refused.
    locked = browser.post("/admin/login/", {"username": "merch", "password": "right-password-123"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in browser.session
    # Another address logs in.
    other = Client(REMOTE_ADDR="198.51.100.5")
    assert other.post("/admin/login/", {"username": "merch", "password": "right-password-123"}).status_code == 302


def test_the_default_per_key_rate_comes_from_measured_capacity() -> None:
    from recsys.settings import base

    # README: ~360 req/s sustained on two workers; the default leaves a sixth of it to everything else.
    assert base.API_DEFAULT_RATE_PER_MINUTE == 18_000 < 360 * 60


# --- Row: 1,000 events with distinct owners -> keys without TTL; Redis without a memory policy -----------------


def test_every_per_owner_key_expires(api: APIClient, items: list[Any]) -> None:
    events = [_event(f"s-{n}", "sku-1", session_id=f"sess-{n}") for n in range(500)]
    events += [_event(f"c-{n}", "sku-2", customer_id=f"cust-{n}") for n in range(500)]
    assert _send(api, *events)["accepted"] == 1000
    assert api.post("/v1/sessions/sess-1/merge", {"customer_id": "cust-1"}, format="json").status_code == 200
    assert api.get("/v1/recommendations", {"customer_id": "cust-2", "count": 2}).status_code == 200
    throttling.sync_now()
    client = redis_client.get()
    # Global keys (the folded features, the completeness marker, schedules' locks) are few and fixed.
    # The impressions queue is one list, capped (experiments.services.MAX_QUEUED_IMPRESSIONS) and drained every 10 s.
    # On a Redis Cluster, also one sentinel per master and their list (events.keys.NODE_SENTINELS).
    fixed = {
        keys.ONLINE_STATE_COMPLETE.encode(), keys.ITEM_FEATURES_BLOB.encode(), keys.ITEM_FEATURES_VERSION.encode(),
        b"exp:{impressions}", keys.NODE_SENTINELS.encode(),
    }  # fmt: skip
    every_key = list(client.scan_iter(count=1000))  # on a Redis Cluster: every primary's (DBSIZE is one node's)
    without_ttl = [
        key for key in every_key
        if key not in fixed and not key.startswith(b"online:{node-") and client.ttl(key) == -1
    ]  # fmt: skip
    assert without_ttl == []
    assert len(every_key) >= 2000  # 1,000 histories and 1,000 versions at least: all of them expiring
    assert 0 < client.ttl(keys.history("cust-3")) <= online.CUSTOMER_TTL_SECONDS
    assert 0 < client.ttl(keys.history("s:sess-3")) <= online.SESSION_TTL_SECONDS


@pytest.fixture
def private_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A redis-server of this test's own, started as localservices starts the demo's, used as this process's Redis
    (its memory ceiling is lowered below; the shared test server must never be)."""
    directory = Path(tempfile.mkdtemp(prefix="redis-policy-"))  # a unix socket path must be short
    socket = directory / "redis.sock"
    localservices.launch_redis_server(directory, socket)
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=2, socket_connect_timeout=2)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                assert time.monotonic() < deadline, f"redis-server did not start; see {directory / 'redis.log'}"
                time.sleep(0.05)
        monkeypatch.setattr(redis_client, "_client", client)
        online.mark_complete(now=time.time())
        serving.clear_caches()
        yield client
    finally:
        throttling.pause_clear()
        localservices.stop_redis_server(directory / "redis.pid")
        shutil.rmtree(directory, ignore_errors=True)
        serving.clear_caches()


def test_the_local_redis_runs_with_a_memory_ceiling_and_no_eviction(private_redis: redis.Redis) -> None:
    assert private_redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert int(private_redis.config_get("maxmemory")["maxmemory"]) > 0


def test_serving_keeps_answering_when_redis_refuses_writes_at_its_ceiling(
    private_redis: redis.Redis, api: APIClient, items: list[Any]
) -> None:
    _send(api, _event("e-1", "sku-1", customer_id="dora"))
    used = int(private_redis.info("memory")["used_memory"])
    # Well below what is used: a transient client buffer counted in used_memory may be freed by the next command.
    private_redis.config_set("maxmemory", str(max(used // 2, 1)))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        private_redis.set("probe", "x" * 1000)
    # Events are still stored (Postgres); the online state misses them, as after any Redis write failure.
    assert _send(api, _event("e-2", "sku-2", customer_id="dora"))["accepted"] == 1
    assert Interaction.objects.filter(event_id="e-2").exists()
    response = api.get("/v1/recommendations", {"customer_id": "dora", "count": 3})
    assert response.status_code == 200, response.content


def test_a_csv_import_does_not_bring_an_erased_customer_back(api: APIClient, items: list[Any], tmp_path: Path) -> None:
    _send(api, _event("e-1", "sku-1", customer_id="carol"))
    assert api.delete("/v1/customers/carol").status_code == 204
    csv = tmp_path / "events.csv"
    csv.write_text(
        "event_id,customer_id,item_id,type,occurred_at\n"
        "i-1,carol,sku-1,view,2026-11-01T10:00:00Z\n"
        "i-2,dave,sku-2,view,2026-11-01T10:00:00Z\n"
    )
    summary = interactions_import(path=csv)
    assert summary.stored == 1
    assert summary.rejected == 1
    assert not Customer.objects.filter(external_id="carol").exists()
    assert Customer.objects.filter(external_id="dave").exists()


# --- Fifth tester (5 December): erasure racing a rebuild, admin deletes, erasure racing writes ---------------------


def _owner_keys(owner: str) -> list[str]:
    client = redis_client.get()
    names = (keys.history(owner), keys.affinity(owner), keys.had(owner), keys.dismissed(owner))
    return [name for name in names if client.exists(name)]


def test_an_erasure_while_the_online_state_is_rebuilt_leaves_nothing_in_redis(api: APIClient, items: list[Any]) -> None:
    """The rebuild reads one snapshot taken before the erasure committed and wrote the erased customer's history,
    interests and purchases back after the erasure's own clean-up: a customer created again under the id (a PUT)
    inherited them. The rebuild now forgets the customers whose row is gone once it has written."""
    for customer in ("gone", "stays"):
        _send(
            api, _event(f"{customer}-1", "sku-1", customer_id=customer),
            _event(f"{customer}-2", "sku-2", customer_id=customer, kind="purchase"),
            _event(f"{customer}-3", "sku-3", customer_id=customer, kind="dismiss"),
        )  # fmt: skip
    _send(api, _event("back-1", "sku-1", customer_id="back"))
    erased: list[int] = []

    def erase_once(stage: str, rows: int) -> None:
        # Inside the rebuild's snapshot (its first rows are read): the erasures commit on other connections, and
        # "back" is created again at once (a PUT), under a new primary key.
        if not erased:
            erased.extend(_at_once([
                lambda: api.delete("/v1/customers/gone").status_code,
                lambda: (api.delete("/v1/customers/back").status_code,
                         api.put("/v1/customers/back", {"attributes": {}}, format="json").status_code),
            ]))  # fmt: skip

    summary = online_state_rebuild(on_progress=erase_once)

    assert erased == [204, (204, 201)]
    assert summary.owners_forgotten == 2
    assert _owner_keys("gone") == []
    assert _owner_keys("back") == []  # the customer created again starts with nothing of the erased one's
    assert _owner_keys("stays")  # the others' state is rebuilt as before
    # Created again by a PUT, the id starts with nothing of the erased customer's.
    assert api.put("/v1/customers/gone", {"attributes": {}}, format="json").status_code in (200, 201)
    export = json.loads(b"".join(api.get("/v1/customers/gone/export").streaming_content))
    assert export["interactions"] == []
    assert export["online"]["history"] == []
    assert export["online"]["had"] == []
    assert _owner_keys("gone") == []


def _customer_with_state(api: APIClient, customer_id: str) -> int:
    _send(
        api, _event(f"{customer_id}-v", "sku-1", customer_id=customer_id),
        _event(f"{customer_id}-p", "sku-2", customer_id=customer_id, kind="purchase"),
        _event(f"{customer_id}-d", "sku-3", customer_id=customer_id, kind="dismiss"),
    )  # fmt: skip
    assert _owner_keys(customer_id)
    return Customer.objects.get(external_id=customer_id).pk


def test_deleting_a_customer_in_the_admin_erases_them(api: APIClient, admin_client: Client, items: list[Any]) -> None:
    """An admin delete was a plain ORM cascade: the Redis state stayed (180 days), no suppression entry, and the
    next event created the customer again with the old history. Now it is the API's erasure, one or many."""
    from django.contrib.admin.models import LogEntry

    pk = _customer_with_state(api, "adm-1")
    # An earlier edit in the admin is in the change log under the customer's id.
    from django.contrib.admin.models import CHANGE

    LogEntry.objects.log_actions(
        user_id=User.objects.get(username="admin").pk, queryset=Customer.objects.filter(pk=pk), action_flag=CHANGE,
        single_object=True,
    )  # fmt: skip
    assert LogEntry.objects.filter(object_repr="adm-1").exists()
    page = admin_client.get(f"/admin/catalog/customer/{pk}/delete/")
    assert page.status_code == 200
    done = admin_client.post(f"/admin/catalog/customer/{pk}/delete/", {"post": "yes"}, follow=True)
    assert done.status_code == 200
    assert "Erased" in done.content.decode()
    assert not Customer.objects.filter(external_id="adm-1").exists()
    assert ErasedCustomer.objects.filter(id_hash=id_hash("adm-1")).exists()
    assert ErasureRecord.objects.count() == 1
    assert _owner_keys("adm-1") == []
    # The change log names the erasure's record, not the customer, and keeps none of their earlier entries.
    assert not LogEntry.objects.filter(object_repr__contains="adm-").exists()
    assert LogEntry.objects.filter(change_message="Erased a customer in the admin.").count() == 1
    # The next event naming the id is refused, as after an API erasure.
    again = api.post("/v1/events", _event("adm-1-again", "sku-1", customer_id="adm-1"), format="json")
    assert again.status_code == 400
    assert "customer_id" in again.json()

    pks = [_customer_with_state(api, f"adm-{n}") for n in (2, 3)]
    changelist = "/admin/catalog/customer/"
    confirm = admin_client.post(changelist, {"action": "delete_selected", "_selected_action": pks})
    assert confirm.status_code == 200  # Django's confirmation page
    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": pks, "post": "yes"})
    assert not Customer.objects.filter(pk__in=pks).exists()
    assert ErasureRecord.objects.count() == 3
    assert all(ErasedCustomer.objects.filter(id_hash=id_hash(f"adm-{n}")).exists() for n in (2, 3))
    assert LogEntry.objects.filter(change_message="Erased a customer in the admin.").count() == 3
    assert not LogEntry.objects.filter(object_repr__contains="adm-").exists()
    assert _owner_keys("adm-2") == []
    assert _owner_keys("adm-3") == []


def test_an_admin_delete_with_redis_down_erases_nothing_and_says_so(
    api: APIClient, admin_client: Client, items: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pk = _customer_with_state(api, "adm-r")
    from privacy import services as privacy_services

    def redis_down(*args: Any, **kwargs: Any) -> int:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(privacy_services.online, "forget_owner", redis_down)
    done = admin_client.post(f"/admin/catalog/customer/{pk}/delete/", {"post": "yes"}, follow=True)
    assert done.status_code == 200
    assert "Redis is unavailable" in done.content.decode()
    assert Customer.objects.filter(pk=pk).exists()
    assert not ErasedCustomer.objects.filter(id_hash=id_hash("adm-r")).exists()
    from django.contrib.admin.models import LogEntry

    assert not LogEntry.objects.exists()  # no deletion logged that did not happen
    # A selection too large to erase within a request is refused before anything is erased.
    from privacy.admin import MAX_SELECTED

    many = Customer.objects.bulk_create(Customer(external_id=f"many-{n}") for n in range(MAX_SELECTED + 1))
    answer = admin_client.post(
        "/admin/catalog/customer/", {"action": "delete_selected", "_selected_action": [c.pk for c in many]},
        follow=True,
    )  # fmt: skip
    assert f"at most {MAX_SELECTED}" in answer.content.decode()
    assert Customer.objects.filter(external_id__startswith="many-").count() == MAX_SELECTED + 1


@contextmanager
def _erasure_held_open(customer_id: str) -> Iterator[None]:
    """An erasure's transaction as ``privacy.services.customer_erase`` runs it (the row locked, deleted, the id on
    the suppression list), held open while the block's request runs, and committed once that request waits on a
    lock (``pg_stat_activity``; after 5 s at the latest), so the request meets the erasure under way."""
    from django.db import transaction
    from django.utils import timezone

    from catalog import erasure

    locked, release = threading.Event(), threading.Event()

    def erase() -> None:
        try:
            with transaction.atomic():
                customer = Customer.objects.select_for_update().get(external_id=customer_id)
                customer.delete()
                erasure.tombstone_add(customer_id=customer_id, erased_at=timezone.now())
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    def release_once_someone_waits() -> None:
        try:
            deadline = time.monotonic() + 5
            with connection.cursor() as cursor:
                while time.monotonic() < deadline:
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    )
                    if cursor.fetchone()[0]:
                        break
                    time.sleep(0.01)
            release.set()
        finally:
            connection.close()

    eraser = threading.Thread(target=erase)
    eraser.start()
    assert locked.wait(10)
    watcher = threading.Thread(target=release_once_someone_waits)
    watcher.start()
    try:
        yield
    finally:
        release.set()
        watcher.join()
        eraser.join()


def test_events_racing_an_erasure_are_refused_by_field_not_a_503(api: APIClient, items: list[Any]) -> None:
    """Events for a customer whose erasure was under way were inserted (the plain read saw the row), and the
    deferred foreign key failed the whole batch at COMMIT: a 503 for every event in it, logged as a database
    outage. Now the batch is stored once more when the key fails and finds the id erased: that event is refused,
    the rest stored."""
    _send(api, _event("r-0", "sku-1", customer_id="racer"))
    with _erasure_held_open("racer"):
        response = api.post(
            "/v1/events",
            {"events": [_event("r-1", "sku-2", customer_id="racer"), _event("r-2", "sku-2", customer_id="bystander")]},
            format="json",
        )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["accepted"] == 1
    assert list(body["rejected"][0]["errors"]) == ["customer_id"]
    assert Interaction.objects.filter(event_id="r-2").exists()
    assert not Interaction.objects.filter(event_id__in=["r-0", "r-1"]).exists()
    assert not Customer.objects.filter(external_id="racer").exists()


def test_a_csv_import_racing_an_erasure_does_not_bring_the_customer_back(
    api: APIClient, items: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import read and created its customers apart from the batch's transaction: an erasure committing in between
    was followed by the batch creating the customer again (its events attached), or by a failed batch (found by a
    review, 5 December). Now the batch locks or creates them in its own transaction."""
    _send(api, _event("c-0", "sku-1", customer_id="erin"))
    csv = tmp_path / "events.csv"
    csv.write_text(
        "event_id,customer_id,item_id,type,occurred_at\n"
        "i-1,erin,sku-1,view,2026-11-01T10:00:00Z\n"
        "i-2,frank,sku-2,view,2026-11-01T10:00:00Z\n"
    )
    # The erasure starts after the import created its customers (its first step, a transaction of its own: left out
    # here), so it meets the batch's own transaction.
    from events.services import imports

    monkeypatch.setattr(imports, "_create_customers", lambda batch, create_missing_items: None)
    with _erasure_held_open("erin"):
        summary = interactions_import(path=csv)
    assert summary.stored == 1
    assert summary.rejected == 1
    assert not Customer.objects.filter(external_id="erin").exists()
    assert not Interaction.objects.filter(event_id__in=["c-0", "i-1"]).exists()
    assert Customer.objects.filter(external_id="frank").exists()


def test_an_impression_flush_racing_an_erasure_stores_the_impression_without_the_customer(
    api: APIClient, items: list[Any]
) -> None:
    """The flush read the customers' keys unlocked: an erasure committing before the flush did failed its batch at
    COMMIT (the deferred foreign key), until a later run stored it (found by a review, 5 December)."""
    from experiments.services import impressions_push

    _send(api, _event("m-0", "sku-1", customer_id="mona"))
    assert api.get("/v1/recommendations", {"customer_id": "mona", "count": 3}).status_code == 200
    impressions_push()
    with _erasure_held_open("mona"):
        summary = impressions_flush()
    assert summary.records >= 1
    assert Impression.objects.filter(customer__isnull=True).exists()
    assert not Customer.objects.filter(external_id="mona").exists()


def test_what_a_batch_committed_just_before_an_erasure_writes_to_redis_is_forgotten_after_it(
    api: APIClient, items: list[Any], celery_worker: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that committed just before the erasure took the row writes its Redis step after its commit, possibly
    after the erasure's own clean-up (found by a review, 5 December): the erasure forgets the owner once more a few
    seconds later, on the worker, unless the id was created again meanwhile."""
    from privacy import services as privacy_services

    monkeypatch.setattr(privacy_services, "FORGET_AGAIN_SECONDS", 0.2)
    for customer in ("late", "reborn"):
        _send(api, _event(f"{customer}-1", "sku-1", customer_id=customer))
        assert api.delete(f"/v1/customers/{customer}").status_code == 204
        # What the batch's late Redis step writes after the erasure's clean-up.
        online.apply_events([online.OnlineEvent(customer, 0, items[2].pk, None, 1, None, time.time())], now=time.time())
        assert _owner_keys(customer)
    assert api.put("/v1/customers/reborn", {"attributes": {}}, format="json").status_code == 201
    deadline = time.monotonic() + 20
    while _owner_keys("late") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _owner_keys("late") == []
    time.sleep(1.0)
    assert _owner_keys("reborn")  # created again by a PUT: what it has now is its own
