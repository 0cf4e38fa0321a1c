"""Customer data rights on the real Postgres and Redis: opt-out and opt-in, erasure of everything stored about a
customer (rows, online state, cached lists, queued and stored impressions) that the next training cannot see, and
the export of it all."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import AbstractUser
from django.test import override_settings
from rest_framework.test import APIClient

from catalog.models import Category, Customer, Item
from events import keys, online
from events.models import Interaction, SessionMerge
from events.online import FORGOTTEN_VERSION_TTL_SECONDS
from events.services import online_state_rebuild
from experiments import services as experiment_services
from experiments.models import Impression
from experiments.services import impressions_flush, impressions_push
from experiments.units import customer_unit
from experiments.validation import VariantSpec
from kernel import redis_client
from privacy.models import ErasureRecord
from ranking import artifacts, serving
from ranking.cache import list_key, owner_key_part
from ranking.services import model_train
from ranking.shown import SHOWN
from ranking.training import TrainParams

pytestmark = pytest.mark.django_db

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
# As tests/ranking/test_ranking_services.py: small and time-independent.
SMALL = TrainParams(
    als_factors=8, als_iterations=10, neighbours_k=10, fbt_k=5, content_dims=8, content_k=5,
    half_life_days=None, history_half_life_days=None, validation_days=30, tune_budget_seconds=0,
    serve="pipeline",  # these tests are about the pipeline; the never-worse choice has its own tests
)  # fmt: skip
ALICE = "alice"


@pytest.fixture
def world() -> dict[str, Any]:
    """Two clusters of ten items; ten customers per cluster, and Alice, buy inside their cluster over 120 days."""
    rng = np.random.default_rng(7)
    categories = [Category.objects.create(external_id=f"k{c}", name=f"Cluster {c}") for c in range(2)]
    items = Item.objects.bulk_create(
        Item(external_id=f"c{c}-{i}", title=f"Thing {c}-{i}", category=categories[c])
        for c in range(2)
        for i in range(10)
    )
    customers = Customer.objects.bulk_create(Customer(external_id=f"u{c}-{n}") for c in range(2) for n in range(10))
    customers.append(Customer.objects.create(external_id=ALICE))
    events = []
    for n, customer in enumerate(customers):
        cluster = min(n // 10, 1)
        for k, item in enumerate(rng.choice(10, 6, replace=False)):
            events.append(
                Interaction(
                    event_id=f"w{n}-{k}", customer=customer, item=items[cluster * 10 + int(item)],
                    type=Interaction.Type.PURCHASE, session_id=f"o{n}-{k // 2}",
                    occurred_at=START + dt.timedelta(days=float(rng.uniform(0, 120))),
                )
            )  # fmt: skip
    Interaction.objects.bulk_create(events)
    return {"items": items, "customers": customers, "alice": customers[-1]}


@pytest.fixture
def artifact_root(tmp_path: Path) -> Iterator[Path]:
    with override_settings(ARTIFACT_ROOT=tmp_path / "artifacts"):
        yield tmp_path / "artifacts"


@pytest.fixture(autouse=True)
def _fresh_serving() -> None:
    serving.clear_caches()


def _trained_user_pks() -> set[int]:
    version = model_train(params=SMALL).version
    model = artifacts.model_load(
        version_id=version.id, name=version.name, checksum=version.checksum, path=Path(version.artifact_path)
    )
    return set(model.array("user_ids").tolist())


def _rec_keys(owner: str) -> list[bytes]:
    return list(redis_client.get().scan_iter(match=f"rec:*:{owner_key_part(owner)}:*"))


# --- Opt-out and opt-in -------------------------------------------------------------------------------------


def test_opt_out_and_in_set_the_flag_and_invalidate_cached_lists(api: APIClient, world: dict[str, Any]) -> None:
    before = online.read_cache_version(ALICE)
    response = api.post(f"/v1/customers/{ALICE}/opt-out")
    assert response.status_code == 200
    assert response.json() == {"customer_id": ALICE, "personalisation_opt_out": True}
    assert Customer.objects.get(external_id=ALICE).personalisation_opt_out
    assert online.read_cache_version(ALICE) == before + 1

    response = api.post(f"/v1/customers/{ALICE}/opt-in")
    assert response.json() == {"customer_id": ALICE, "personalisation_opt_out": False}
    assert not Customer.objects.get(external_id=ALICE).personalisation_opt_out
    assert online.read_cache_version(ALICE) == before + 2


def test_opt_out_of_an_unknown_customer_is_kept_for_their_first_event(api: APIClient) -> None:
    assert api.post("/v1/customers/newcomer/opt-out").status_code == 200
    assert Customer.objects.get(external_id="newcomer").personalisation_opt_out


def _list(api: APIClient, **params: Any) -> list[str]:
    response = api.get("/v1/recommendations", {"count": 8, **params})
    assert response.status_code == 200, response.content
    assert response.json()["degraded"] is False
    return [item["item_id"] for item in response.json()["items"]]


def test_opted_out_customer_gets_the_anonymous_list(api: APIClient, world: dict[str, Any], artifact_root: Path) -> None:
    model_train(params=SMALL)
    artifacts.loader().reset()  # serve the version just trained
    online_state_rebuild()  # Alice's purchases in her online history, as ingestion would have put them
    bought = set(Interaction.objects.filter(customer=world["alice"]).values_list("item__external_id", flat=True))
    anonymous = _list(api)
    personal = _list(api, customer_id=ALICE)
    assert personal != anonymous  # her own list: what she bought is left out, her cluster comes first
    assert not bought & set(personal)

    assert api.post(f"/v1/customers/{ALICE}/opt-out").status_code == 200
    serving.clear_caches()  # the per-process opt-out set (reloaded within half a second) of this test's process
    assert _list(api, customer_id=ALICE) == anonymous

    assert api.post(f"/v1/customers/{ALICE}/opt-in").status_code == 200
    serving.clear_caches()
    again = _list(api, customer_id=ALICE)
    assert again != anonymous
    assert not bought & set(again)


def test_training_after_opt_out_has_no_row_for_the_customer(
    api: APIClient, world: dict[str, Any], artifact_root: Path
) -> None:
    alice = world["alice"]
    assert alice.pk in _trained_user_pks()
    assert api.post(f"/v1/customers/{ALICE}/opt-out").status_code == 200
    users = _trained_user_pks()
    assert alice.pk not in users
    assert len(users) == len(world["customers"]) - 1


# --- Erasure ------------------------------------------------------------------------------------------------


def _alice_everywhere(api: APIClient) -> None:
    """Alice's data in every place it can be: interactions (world), online history and affinity (an API event), a
    cached list in Redis and an impression queued there (a recommendation), and a stored impression (flushed)."""
    response = api.post("/v1/events", {"customer_id": ALICE, "item_id": "c0-1", "type": "view"}, format="json")
    assert response.status_code == 202
    assert api.get("/v1/recommendations", {"customer_id": ALICE}).status_code == 200
    impressions_flush()
    assert api.get("/v1/recommendations", {"customer_id": ALICE, "count": 5}).status_code == 200
    client = redis_client.get()
    assert client.exists(keys.history(ALICE), keys.affinity(ALICE)) == 2
    SHOWN.flush()  # what the web process's background loop does within 50 ms
    assert client.exists(keys.shown(ALICE))  # what her lists showed, for exclude_request_ids
    assert _rec_keys(ALICE)
    assert Impression.objects.filter(customer__external_id=ALICE).exists()
    impressions_push()  # what the web process's background loop does within 50 ms
    assert client.llen("exp:{impressions}") == 1


def test_erasure_removes_everything_about_the_customer_and_keeps_an_anonymous_record(
    api: APIClient, world: dict[str, Any]
) -> None:
    _alice_everywhere(api)
    alice = world["alice"]
    other = world["customers"][0]
    others_interactions = Interaction.objects.exclude(customer=alice).count()
    interactions = Interaction.objects.filter(customer=alice).count()

    response = api.delete(f"/v1/customers/{ALICE}")

    assert response.status_code == 204
    assert not Customer.objects.filter(external_id=ALICE).exists()
    assert not Interaction.objects.filter(customer_id=alice.pk).exists()
    assert not Impression.objects.filter(customer_id=alice.pk).exists()
    client = redis_client.get()
    assert client.exists(keys.history(ALICE), keys.affinity(ALICE), keys.shown(ALICE), keys.dismissed(ALICE)) == 0
    assert _rec_keys(ALICE) == []
    # The version lives on briefly (bumped, so no cached list of Alice is reachable), then goes too.
    assert 0 < client.ttl(keys.cache_version(ALICE)) <= FORGOTTEN_VERSION_TTL_SECONDS
    # The impression that was still queued was stored and erased with the rest: a later flush cannot bring her back.
    impressions_flush()
    assert not Customer.objects.filter(external_id=ALICE).exists()
    # Everyone else is untouched.
    assert Interaction.objects.count() == others_interactions
    assert Customer.objects.filter(pk=other.pk).exists()

    record = ErasureRecord.objects.get()
    assert record.requested_by_key_prefix.startswith("rk_")
    assert record.interactions_deleted == interactions
    assert record.impressions_deleted == 2
    assert record.online_keys_deleted == 3  # history, affinities, what her lists showed
    assert record.cached_lists_deleted >= 1
    # Only that an erasure happened: no column could hold who it was.
    stored = ErasureRecord.objects.values().get()
    assert set(stored) == {
        "id", "erased_at", "requested_by_key_prefix", "interactions_deleted", "impressions_deleted",
        "online_keys_deleted", "cached_lists_deleted",
    }  # fmt: skip
    assert ALICE not in json.dumps(stored, default=str)


def test_erasure_deletes_only_the_customers_own_cached_lists(api: APIClient) -> None:
    """Ids may hold glob characters: the SCAN pattern escapes them, so it matches this customer's lists only."""
    client = redis_client.get()
    mine, theirs = list_key("home", ["a*b"], (10, None)), list_key("home", ["aXYb"], (10, None))
    client.set(mine, "[]")
    client.set(theirs, "[]")
    Customer.objects.create(external_id="a*b")
    assert api.delete("/v1/customers/a*b").status_code == 204
    assert client.exists(mine, theirs) == 1
    assert client.exists(theirs)


def test_erasure_of_an_unknown_customer_is_404(api: APIClient) -> None:
    response = api.delete("/v1/customers/nobody")
    assert response.status_code == 404
    assert response.json() == {"detail": "No customer with id 'nobody'."}
    assert not ErasureRecord.objects.exists()


def test_erasure_keeps_the_catalog_get_and_put_of_the_customer(api: APIClient) -> None:
    assert api.put("/v1/customers/bob", {"attributes": {"tier": "gold"}}, format="json").status_code == 201
    assert api.get("/v1/customers/bob").json()["attributes"] == {"tier": "gold"}
    assert api.delete("/v1/customers/bob").status_code == 204
    assert api.get("/v1/customers/bob").status_code == 404


def test_next_training_cannot_see_an_erased_customer(
    api: APIClient, world: dict[str, Any], artifact_root: Path
) -> None:
    alice = world["alice"]
    assert alice.pk in _trained_user_pks()
    assert api.delete(f"/v1/customers/{ALICE}").status_code == 204
    users = _trained_user_pks()
    assert alice.pk not in users
    assert len(users) == len(world["customers"]) - 1


# --- Export -------------------------------------------------------------------------------------------------


def _export(api: APIClient, customer_id: str) -> Any:
    response = api.get(f"/v1/customers/{customer_id}/export")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    return json.loads(b"".join(response.streaming_content))


def test_export_holds_everything_stored_about_the_customer(api: APIClient, world: dict[str, Any]) -> None:
    _alice_everywhere(api)  # one of her two impressions is still queued in Redis
    api.put(f"/v1/customers/{ALICE}", {"attributes": {"tier": "gold"}}, format="json")

    body = _export(api, ALICE)

    assert body["customer"] == {
        "customer_id": ALICE, "created_at": body["customer"]["created_at"], "attributes": {"tier": "gold"},
        "personalisation_opt_out": False,
    }  # fmt: skip
    stored = Interaction.objects.filter(customer__external_id=ALICE)
    assert len(body["interactions"]) == stored.count() == 7
    assert {row["event_id"] for row in body["interactions"]} == set(stored.values_list("event_id", flat=True))
    view = next(row for row in body["interactions"] if row["type"] == "view")
    assert view["item_id"] == "c0-1"
    assert len(body["impressions"]) == 2
    assert all(item_id.startswith("c") for row in body["impressions"] for item_id in row["item_ids"])
    assert body["online"]["history"][0]["item_id"] == "c0-1"
    assert body["online"]["history"][0]["type"] == "view"
    assert set(body["online"]["category_affinity"]) == {"k0"}
    # Nobody else's data.
    assert "u0-0" not in json.dumps(body)


def test_export_streams_long_histories_in_chunks(api: APIClient, world: dict[str, Any]) -> None:
    item = world["items"][0]
    Interaction.objects.bulk_create(
        Interaction(event_id=f"bulk-{n}", customer=world["alice"], item=item, type=Interaction.Type.VIEW,
                    occurred_at=START + dt.timedelta(minutes=n))
        for n in range(3000)
    )  # fmt: skip
    response = api.get(f"/v1/customers/{ALICE}/export")
    chunks = list(response.streaming_content)
    assert len(chunks) > 3
    assert len(json.loads(b"".join(chunks))["interactions"]) == 3006


def test_export_of_an_unknown_customer_is_404(api: APIClient) -> None:
    assert api.get("/v1/customers/nobody/export").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/customers/x/opt-out"),
        ("post", "/v1/customers/x/opt-in"),
        ("get", "/v1/customers/x/export"),
        ("delete", "/v1/customers/x"),
    ],
)
def test_customer_data_endpoints_need_the_catalog_scope(
    make_api_client: Callable[..., APIClient], method: str, path: str
) -> None:
    response = getattr(make_api_client("recommend", "events"), method)(path)
    assert response.status_code == 403
    assert response.json() == {"detail": "This API key lacks the 'catalog' scope."}


# --- A session merged into the customer ---------------------------------------------------------------------

VISIT, SHOPPER = "visit-7b97c5", "shopper-7b97c5"


@pytest.fixture
def home_experiment(django_user_model: type[AbstractUser]) -> str:
    """An A/B test running on the home surface, so every list served there is an experiment impression."""
    user = django_user_model.objects.create_user("merchandiser")
    experiment = experiment_services.experiment_create(
        key="home-test", name="Home test", surface="home",
        variants=[VariantSpec("control", 0.5, True, {}), VariantSpec("b", 0.5, False, {"exploration_share": 0.1})],
    )  # fmt: skip
    experiment_services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    experiment_services.assignment_cache_clear()
    return experiment.key


def _served(api: APIClient, **params: str) -> tuple[str, str]:
    """A home list's request id and its first item."""
    response = api.get("/v1/recommendations", {"count": 5, **params})
    assert response.status_code == 200, response.content
    return response.json()["request_id"], response.json()["items"][0]["item_id"]


def _merge(api: APIClient, session_id: str, customer_id: str) -> None:
    response = api.post(f"/v1/sessions/{session_id}/merge", {"customer_id": customer_id}, format="json")
    assert response.status_code == 200, response.content


def _results(key: str) -> list[tuple[str, int, int, int]]:
    results = experiment_services.experiment_results(key=key)
    return [(name, results.variant(name).exposures, results.variant(name).impressions, results.variant(name).clicks)
            for name in ("control", "b")]  # fmt: skip


def test_a_merged_sessions_lists_are_exported_and_erased_with_the_customer(
    api: APIClient, world: dict[str, Any], home_experiment: str
) -> None:
    """The tester's sequence: five lists served to an anonymous session and clicked, the session merged at login,
    one list served after it; the export listed one impression and the erasure left the session's five behind."""
    served = [_served(api, session_id=VISIT) for _ in range(5)]
    clicks = [
        {"event_id": f"click-{n}", "session_id": VISIT, "item_id": item_id, "type": "click", "request_id": request_id}
        for n, (request_id, item_id) in enumerate(served)
    ]
    assert api.post("/v1/events", {"events": clicks}, format="json").json()["accepted"] == 5
    impressions_flush()
    results_before = _results(home_experiment)

    _merge(api, VISIT, SHOPPER)
    after_login, _ = _served(api, customer_id=SHOPPER, session_id=VISIT)

    # The session's lists keep their unit (the session the assignment hashed): the results count them as before.
    assert Impression.objects.filter(session_id=VISIT, customer__isnull=True).count() == 5
    assert _results(home_experiment) == results_before

    body = _export(api, SHOPPER)
    assert {row["request_id"] for row in body["impressions"]} == {request_id for request_id, _ in served} | {
        after_login
    }
    assert [row["served_at"] for row in body["impressions"]] == sorted(row["served_at"] for row in body["impressions"])
    assert {row["experiment"] for row in body["impressions"]} == {home_experiment}
    assert {row["request_id"] for row in body["interactions"]} == {request_id for request_id, _ in served}
    assert [merge["session_id"] for merge in body["session_merges"]] == [VISIT]

    assert api.delete(f"/v1/customers/{SHOPPER}").status_code == 204

    assert not Impression.objects.filter(session_id=VISIT).exists()
    assert not Interaction.objects.filter(session_id=VISIT).exists()
    assert not SessionMerge.objects.exists()
    assert ErasureRecord.objects.get().impressions_deleted == 6


def test_a_list_served_before_the_merge_and_stored_after_it_is_the_customers(
    api: APIClient, world: dict[str, Any]
) -> None:
    """Impressions reach Postgres asynchronously (buffer, Redis queue, flush): one still on its way when the session
    is merged is the customer's all the same."""
    request_id, _ = _served(api, session_id=VISIT)  # in this process's buffer, not even queued in Redis
    _merge(api, VISIT, SHOPPER)
    assert not Impression.objects.filter(request_id=request_id).exists()

    assert [row["request_id"] for row in _export(api, SHOPPER)["impressions"]] == [request_id]
    assert api.delete(f"/v1/customers/{SHOPPER}").status_code == 204
    assert not Impression.objects.filter(request_id=request_id).exists()


def test_a_session_merged_twice_gives_each_customer_what_it_was_served_before_their_merge(
    api: APIClient, world: dict[str, Any]
) -> None:
    """One browser, two logins: what the session was served before the first merge is the first customer's, what
    it was served between the merges the second's, and what it is served anonymously after them nobody's."""
    first, _ = _served(api, session_id=VISIT)
    _merge(api, VISIT, "first-shopper")
    between, _ = _served(api, session_id=VISIT)
    _merge(api, VISIT, "second-shopper")
    _merge(api, VISIT, "second-shopper")  # a retry
    later, _ = _served(api, session_id=VISIT)
    impressions_flush()

    assert [row["request_id"] for row in _export(api, "first-shopper")["impressions"]] == [first]
    assert [row["request_id"] for row in _export(api, "second-shopper")["impressions"]] == [between]

    assert api.delete("/v1/customers/first-shopper").status_code == 204
    assert set(Impression.objects.values_list("request_id", flat=True)) == {between, later}
    assert [row["request_id"] for row in _export(api, "second-shopper")["impressions"]] == [between]


def test_a_customer_deleted_in_the_admin_gives_a_later_merge_nothing_it_was_served(
    api: APIClient, world: dict[str, Any]
) -> None:
    """The first customer deleted other than by an erasure (the admin) took its merge record along, so the second
    customer's merge became the session's first and its export gained what the session was served before the first
    login (a reviewer, 6 December). The record now stays, customerless, and keeps the boundary."""
    first, _ = _served(api, session_id=VISIT)
    _merge(api, VISIT, "first-shopper")
    between, _ = _served(api, session_id=VISIT)
    _merge(api, VISIT, "second-shopper")
    impressions_flush()

    Customer.objects.get(external_id="first-shopper").delete()

    assert SessionMerge.objects.filter(customer__isnull=True).count() == 1
    assert [row["request_id"] for row in _export(api, "second-shopper")["impressions"]] == [between]
    assert api.delete("/v1/customers/second-shopper").status_code == 204
    assert set(Impression.objects.values_list("request_id", flat=True)) == {first}
    assert SessionMerge.objects.filter(customer__isnull=True).count() == 1


# --- Lists served under the id before the customer existed -------------------------------------------------------

NEWCOMER = "newcomer-5e0a"


def test_lists_served_before_the_customer_existed_are_exported_and_erased_with_them(
    api: APIClient, world: dict[str, Any], home_experiment: str
) -> None:
    """A logged-in shopper's first lists, before any event created their row, are stored without them (a read creates
    no customer) but with their id's pseudonymous unit: their export lists them, their erasure deletes them (and
    counts them), nobody else's are touched, and lists served under the id after the erasure keep no unit."""
    before = [_served(api, customer_id=NEWCOMER)[0] for _ in range(2)]
    with_session, _ = _served(api, customer_id=NEWCOMER, session_id=VISIT)
    stranger, _ = _served(api, customer_id="stranger-5e0a")
    impressions_flush()
    assert Impression.objects.filter(request_id__in=[*before, with_session], customer__isnull=True).count() == 3
    event = {"customer_id": NEWCOMER, "item_id": "c0-1", "type": "view"}
    assert api.post("/v1/events", event, format="json").status_code == 202
    _merge(api, VISIT, NEWCOMER)  # the session's list is theirs twice over: listed and counted once
    after, _ = _served(api, customer_id=NEWCOMER)
    impressions_flush()

    exported = [row["request_id"] for row in _export(api, NEWCOMER)["impressions"]]
    assert sorted(exported) == sorted([*before, with_session, after])
    assert stranger not in exported

    assert api.delete(f"/v1/customers/{NEWCOMER}").status_code == 204

    assert not Impression.objects.filter(request_id__in=[*before, with_session, after]).exists()
    assert ErasureRecord.objects.get().impressions_deleted == 4
    assert Impression.objects.filter(request_id=stranger, customer_unit=customer_unit("stranger-5e0a")).exists()
    # Served under the erased id again: stored with neither customer nor unit (nothing links it to the id any more).
    again, _ = _served(api, customer_id=NEWCOMER)
    impressions_flush()
    assert Impression.objects.filter(request_id=again, customer__isnull=True, customer_unit__isnull=True).exists()


VISITOR = "visitor-7c1d"


def test_an_id_only_ever_named_in_reads_is_exported_and_erased(
    api: APIClient, world: dict[str, Any], home_experiment: str
) -> None:
    """A logged-in shopper who never sent an event has no customer row, yet the lists served under their id are
    stored with its unit and cached under it: their export lists them, their erasure deletes them and the cached
    lists, records it and suppresses the id; a second erasure, and any of an id never named, is 404."""
    served = [_served(api, customer_id=VISITOR)[0] for _ in range(2)]
    stranger, _ = _served(api, customer_id="stranger-7c1d")
    assert _rec_keys(VISITOR)
    assert not Customer.objects.filter(external_id=VISITOR).exists()

    body = _export(api, VISITOR)  # the queued impressions are stored first
    assert body["customer"] == {
        "customer_id": VISITOR, "created_at": None, "attributes": {}, "personalisation_opt_out": False,
    }  # fmt: skip
    assert sorted(row["request_id"] for row in body["impressions"]) == sorted(served)
    assert body["interactions"] == []
    assert body["session_merges"] == []

    assert api.delete(f"/v1/customers/{VISITOR}").status_code == 204

    assert not Impression.objects.filter(request_id__in=served).exists()
    assert Impression.objects.filter(request_id=stranger).exists()
    record = ErasureRecord.objects.get()
    assert (record.impressions_deleted, record.interactions_deleted) == (2, 0)
    assert record.cached_lists_deleted >= 1
    assert not _rec_keys(VISITOR)
    assert not Customer.objects.filter(external_id=VISITOR).exists()
    # Suppressed like any erased id: an event naming it is refused, and it has nothing left to export or erase.
    event = {"customer_id": VISITOR, "item_id": "c0-1", "type": "view"}
    assert api.post("/v1/events", event, format="json").status_code == 400
    assert api.get(f"/v1/customers/{VISITOR}/export").status_code == 404
    assert api.delete(f"/v1/customers/{VISITOR}").status_code == 404
    assert ErasureRecord.objects.count() == 1
