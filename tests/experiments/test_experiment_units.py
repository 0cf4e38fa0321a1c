"""What an experiment counts as a unit, through the real API: the unit the assignment hashed must be the unit the
results count, and no unit may sit in two arms of an A/B test. Otherwise a heavy visitor weighs as many customers,
all in one arm (a false sample-ratio mismatch, a biased arm), or every customer is in both arms (a diluted effect).

A twelfth tester (6 December; docs/reliability.md) found serving hashing one unit and logging another in four
places; serving now hashes the unit the results count (``ranking.serving.experiment_unit``). A fifth, a customer the
platform had not heard of yet (their impressions are stored without them until their first event), is counted by the
pseudonymous unit each impression keeps of the id its list was assigned by (``Impression.customer_unit``), and those
lists become the customer's when their row is created (``experiments.services.impressions_link_customers``), so a
first purchase without a request id counts for them even when no later list of theirs was served.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from catalog.models import Customer
from catalog.services import customer_upsert
from experiments import services
from experiments.models import Experiment, Impression
from experiments.units import customer_unit
from experiments.validation import VariantSpec
from ranking import serving
from tests.factories import CustomerFactory, ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh() -> None:
    services.assignment_cache_clear()
    serving.clear_caches()


@pytest.fixture
def items() -> list[str]:
    return [ItemFactory().external_id for _ in range(12)]


def _running(user: AbstractUser, surface: str, key: str) -> Experiment:
    experiment = services.experiment_create(
        key=key, name=key, surface=surface,
        variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"diversity_cap": 0.5})],
    )  # fmt: skip
    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    return experiment


def _flushed_results(key: str):  # noqa: ANN202
    services.impressions_push()
    services.impressions_flush()
    return services.experiment_results(key=key)


def test_customers_and_sessions_are_one_unit_each_in_one_arm(
    api: APIClient, django_user_model: type[AbstractUser], items: list[str]
) -> None:
    """What holds: a known customer and an anonymous session keep one arm over many requests, and each is one unit."""
    _running(django_user_model.objects.create_user("ds"), "home", "units-ok")
    CustomerFactory(external_id="known-1")
    seen: dict[str, set[str]] = {"known-1": set(), "s:visit-1": set()}
    for _ in range(15):
        body = api.get("/v1/recommendations", {"customer_id": "known-1", "surface": "home", "count": 4}).json()
        seen["known-1"].add(body["variant"])
        body = api.get("/v1/recommendations", {"session_id": "visit-1", "surface": "home", "count": 4}).json()
        seen["s:visit-1"].add(body["variant"])
    assert all(len(arms) == 1 for arms in seen.values())
    results = _flushed_results("units-ok")
    assert sum(v.exposures for v in results.variants) == 2
    assert sum(v.impressions for v in results.variants) == 30


def test_requests_without_a_customer_or_session_are_split_like_everyone_else(
    api: APIClient, django_user_model: type[AbstractUser], items: list[str]
) -> None:
    """A list asked for with neither id (a crawler, a cache warmer, a storefront's server-side render) is a unit of its
    own in the results ("r:<request id>"), but serving hashes the constant "anonymous": every such list lands in the
    same arm. 120 of them are 120 "customers" of one arm: a sample-ratio mismatch, and an arm fed cold-start traffic
    the other never sees."""
    _running(django_user_model.objects.create_user("ds"), "home", "units-anon")
    arms = Counter(
        api.get("/v1/recommendations", {"surface": "home", "count": 4}).json()["variant"] for _ in range(120)
    )
    results = _flushed_results("units-anon")
    assert sum(v.exposures for v in results.variants) == 120  # what the results count: one unit per list
    assert min(arms["control"], arms["b"]) > 30, arms  # ...so the lists must be split per list, as hashed
    assert not results.srm_flagged


@pytest.mark.parametrize(
    "known",
    [
        pytest.param(True, id="opted-out"),
        pytest.param(False, id="not-yet-known"),
    ],
)
def test_a_customer_logged_without_their_id_is_not_many_units_of_one_arm(
    api: APIClient, django_user_model: type[AbstractUser], items: list[str], known: bool
) -> None:
    """An opted-out customer (impressions are logged without the id) or one whose first event has not arrived yet
    (the flush finds no customer), without a session: serving hashed the customer id, so all 40 lists went to one
    arm, while the results counted each list as a customer of its own. Now the opted-out customer's lists are hashed
    per list, and the unknown customer's counted by the unit their impressions keep of the id (one unit)."""
    _running(django_user_model.objects.create_user("ds"), "home", "units-id")
    if known:
        CustomerFactory(external_id="heavy-1")
        assert api.post("/v1/customers/heavy-1/opt-out").status_code == 200
    arms = Counter(
        api.get("/v1/recommendations", {"customer_id": "heavy-1", "surface": "home", "count": 4}).json()["variant"]
        for _ in range(40)
    )
    results = _flushed_results("units-id")
    units = sum(v.exposures for v in results.variants)
    # Either the customer is one unit (hashed and counted by id), or each list is (hashed and counted per list).
    assert units == 1 or min(arms.values(), default=0) > 0 and len(arms) == 2, (units, arms)


def test_a_session_keeps_its_arm_when_an_opted_out_customer_signs_in_on_it(
    api: APIClient, django_user_model: type[AbstractUser], items: list[str]
) -> None:
    """An opted-out customer's lists are the session's (their impressions carry only the session): serving hashed
    the bare session id for them, and ``s:<session>`` for the same session browsing anonymously, so one session unit
    could sit in both arms (found by the helper that built the customer unit, 6 December)."""
    _running(django_user_model.objects.create_user("ds"), "home", "units-optout-session")
    CustomerFactory(external_id="private-1")
    assert api.post("/v1/customers/private-1/opt-out").status_code == 200
    for n in range(24):
        session = f"visit-{n}"
        anonymous = api.get("/v1/recommendations", {"session_id": session, "surface": "home", "count": 4})
        signed_in = api.get(
            "/v1/recommendations", {"customer_id": "private-1", "session_id": session, "surface": "home", "count": 4}
        )
        assert signed_in.json()["variant"] == anonymous.json()["variant"], session
    results = _flushed_results("units-optout-session")
    assert sum(v.exposures for v in results.variants) == 24  # one unit per session


@pytest.mark.parametrize("linked_on_creation", [True, False], ids=["linked-on-creation", "linked-by-a-later-list"])
def test_a_customer_not_yet_known_is_one_unit_with_their_later_lists_and_converts_on_their_first(
    api: APIClient,
    django_user_model: type[AbstractUser],
    items: list[str],
    django_capture_on_commit_callbacks: Callable[..., Any],
    linked_on_creation: bool,
) -> None:
    """A logged-in shopper's first lists are stored without them (no row yet), the lists after their first event with
    them: one unit, in one arm. A purchase sent without a request id of an item only those first lists showed is
    theirs: the lists become the customer's when their row is created, and where that did not happen (a row created
    before the link existed, or its link failed) the results link them by their unit once a later list carries
    both."""
    _running(django_user_model.objects.create_user("ds"), "home", "units-later")
    params = {"customer_id": "later-1", "surface": "home", "count": 4}
    first = [api.get("/v1/recommendations", params).json() for _ in range(3)]
    bought = first[0]["items"][0]["item_id"]
    services.impressions_push()
    services.impressions_flush()
    assert not Customer.objects.filter(external_id="later-1").exists()
    event = {"customer_id": "later-1", "item_id": items[-1], "type": "view"}
    with django_capture_on_commit_callbacks(execute=linked_on_creation):
        assert api.post("/v1/events", event, format="json").status_code == 202
    later = [api.get("/v1/recommendations", {**params, "exclude": bought}).json() for _ in range(2)]
    assert all(bought not in {item["item_id"] for item in body["items"]} for body in later)
    purchase = {"customer_id": "later-1", "item_id": bought, "type": "purchase", "value": 30}
    assert api.post("/v1/events", purchase, format="json").status_code == 202

    results = _flushed_results("units-later")

    (arm,) = {body["variant"] for body in first + later}
    shown = results.variant(arm)
    assert (shown.exposures, shown.impressions, shown.conversions) == (1, 5, 1)
    assert sum(v.exposures for v in results.variants) == 1
    customer = Customer.objects.get(external_id="later-1")
    stored = Impression.objects.filter(experiment__key="units-later")
    assert {row.customer_unit for row in stored} == {customer_unit("later-1")}
    unlinked = 0 if linked_on_creation else 3
    assert sorted(row.customer_id is None for row in stored) == [False] * (5 - unlinked) + [True] * unlinked
    assert {row.customer_id for row in stored} == ({customer.pk} if linked_on_creation else {None, customer.pk})


def test_a_first_purchase_without_a_request_id_counts_for_lists_no_later_list_linked(
    api: APIClient,
    django_user_model: type[AbstractUser],
    items: list[str],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    """The shopper's lists were stored without them; their purchase, sent without the list's request id, creates
    their row, and they are not served on the surface again: creating the row gives them those lists (linked by
    their unit), so the purchase is attributed, and the lists are theirs in the impression log."""
    _running(django_user_model.objects.create_user("ds"), "home", "units-unlinked")
    body = api.get("/v1/recommendations", {"customer_id": "buyer-1", "surface": "home", "count": 4}).json()
    services.impressions_push()
    services.impressions_flush()  # stored without the customer: no row yet
    purchase = {"customer_id": "buyer-1", "item_id": body["items"][0]["item_id"], "type": "purchase", "value": 30}
    with django_capture_on_commit_callbacks(execute=True):  # the test's transaction stands for the request's
        assert api.post("/v1/events", purchase, format="json").status_code == 202

    results = _flushed_results("units-unlinked")

    shown = results.variant(body["variant"])
    assert (shown.exposures, shown.impressions, shown.conversions) == (1, 1, 1)
    customer = Customer.objects.get(external_id="buyer-1")
    assert list(Impression.objects.filter(experiment__key="units-unlinked").values_list("customer_id", flat=True)) == [
        customer.pk
    ]


def test_lists_are_linked_to_a_customer_created_by_put_or_an_event_batch_and_to_no_one_else(
    api: APIClient,
    django_user_model: type[AbstractUser],
    items: list[str],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    """Every way a customer row is made links the lists served under that id before it (PUT /v1/customers, an
    event batch); lists of another id, and of an id whose creation rolled back, stay as they were."""
    _running(django_user_model.objects.create_user("ds"), "home", "units-put")
    for customer_id in ("put-1", "batch-1", "batch-2", "stranger-1"):
        api.get("/v1/recommendations", {"customer_id": customer_id, "surface": "home", "count": 4})
    services.impressions_push()
    services.impressions_flush()
    assert not Impression.objects.filter(experiment__key="units-put", customer__isnull=False).exists()

    with django_capture_on_commit_callbacks(execute=True):  # the test's transaction stands for the requests'
        assert api.put("/v1/customers/put-1", {"attributes": {}}, format="json").status_code == 201
        batch = {"events": [{"customer_id": c, "item_id": items[0], "type": "view"} for c in ("batch-1", "batch-2")]}
        assert api.post("/v1/events", batch, format="json").status_code == 202
    # A creation that rolls back links nothing (the signal is sent on commit).
    with django_capture_on_commit_callbacks(execute=True), contextlib.suppress(RuntimeError), transaction.atomic():
        customer_upsert(external_id="stranger-1")
        raise RuntimeError("rolled back")
    assert not Customer.objects.filter(external_id="stranger-1").exists()

    stored = dict(
        Impression.objects.filter(experiment__key="units-put").values_list("customer_unit", "customer__external_id")
    )
    assert stored == {
        customer_unit("put-1"): "put-1", customer_unit("batch-1"): "batch-1", customer_unit("batch-2"): "batch-2",
        customer_unit("stranger-1"): None,
    }  # fmt: skip


def test_lists_stored_before_the_unit_was_recorded_count_as_they_did(
    django_user_model: type[AbstractUser], items: list[str]
) -> None:
    """Rows stored before ``customer_unit`` existed have none: a customer's count under the customer (with their
    newer rows), a session's under the session, any other list as a unit of its own."""
    experiment = _running(django_user_model.objects.create_user("ds"), "home", "units-old")
    control = experiment.variants.get(is_control=True)
    known = CustomerFactory(external_id="old-1")
    now = timezone.now()
    rows = [
        (known, None, ""), (known, None, ""), (known, customer_unit("old-1"), ""),  # one unit: the customer
        (None, None, "visit-9"), (None, None, "visit-9"),  # one unit: the session
        (None, None, ""), (None, None, ""),  # a unit each: two
        (None, customer_unit("new-2"), ""), (None, customer_unit("new-2"), "visit-10"),  # one unit: new-2
    ]  # fmt: skip
    Impression.objects.bulk_create(
        Impression(
            request_id=f"old-{n}",
            served_at=now - timedelta(minutes=n),
            surface="home",
            customer=customer,
            customer_unit=unit,
            session_id=session,
            experiment=experiment,
            variant=control,
            item_pks=[1],
        )  # fmt: skip
        for n, (customer, unit, session) in enumerate(rows)
    )

    results = services.experiment_results(key="units-old")

    assert results.variant("control").exposures == 5
    assert results.variant("control").impressions == len(rows)


def test_a_pages_similar_widget_keeps_a_customer_in_one_arm(
    api: APIClient, django_user_model: type[AbstractUser], items: list[str]
) -> None:
    """``POST /v1/pages``' similar widget hashes each list's request id (like ``/v1/items/{id}/similar``) but logs
    the customer, whom the results count as the unit: after twenty product pages the customer is in both arms, and a
    purchase is attributed to both (the effect is diluted towards 0)."""
    experiment = _running(django_user_model.objects.create_user("ds"), "similar", "units-similar")
    CustomerFactory(external_id="browser-1")
    for n in range(20):
        body = {
            "customer_id": "browser-1", "context_item_id": items[n % len(items)],
            "widgets": [{"kind": "similar", "count": 4}],
        }  # fmt: skip
        assert api.post("/v1/pages", body, format="json").status_code == 200
    _flushed_results("units-similar")
    customer = Customer.objects.get(external_id="browser-1")
    arms = set(
        Impression.objects.filter(experiment=experiment, customer=customer).values_list("variant__name", flat=True)
    )
    assert len(arms) <= 1, arms


def test_concluding_without_a_winner_sends_traffic_to_the_default_and_keeps_what_was_logged(
    api: APIClient, django_user_model: type[AbstractUser], items: list[str]
) -> None:
    """What holds: a roll-back takes effect on the next request (the arm's cached list is not served again: the cache
    key carries the variant and its config), and the lists logged while it ran stay in its results."""
    user = django_user_model.objects.create_user("ds")
    experiment = _running(user, "home", "units-rollback")
    CustomerFactory(external_id="rb-1")
    params = {"customer_id": "rb-1", "surface": "home", "count": 4}
    before = [api.get("/v1/recommendations", params).json() for _ in range(3)]
    assert {body["experiment"] for body in before} == {"units-rollback"}
    services.impressions_push()
    services.impressions_flush()

    services.experiment_conclude(experiment_id=experiment.pk, winner=None, user_id=user.pk)
    services.assignment_cache_clear()  # what the version token does within a second in every process

    after = api.get("/v1/recommendations", params).json()
    assert after["experiment"] is None
    assert after["variant"] is None
    results = _flushed_results("units-rollback")
    assert sum(v.impressions for v in results.variants) == 3
    assert Impression.objects.filter(experiment=experiment).count() == 3


def test_because_you_viewed_lists_served_under_an_arm_are_logged_as_the_page_widgets_are(
    api: APIClient, django_user_model: type[AbstractUser], items: list[str]
) -> None:
    """``GET /v1/customers/{id}/because-you-viewed`` answers with the experiment and arm it served, but logs no
    impression (the page's because-you-viewed widget does): an experiment on that surface sees only page widgets, and
    a click on the endpoint's lists carries a request id no impression has."""
    experiment = _running(django_user_model.objects.create_user("ds"), "because_you_viewed", "units-byv")
    CustomerFactory(external_id="byv-1")
    body = api.get("/v1/customers/byv-1/because-you-viewed").json()
    assert body["experiment"] == "units-byv"
    _flushed_results("units-byv")
    assert Impression.objects.filter(experiment=experiment).count() == 1
