"""An A/B test end to end, the way it runs in production: a merchandiser sets it up and starts it in the admin,
shoppers are served and click only through the public API, impressions are flushed by the service the beat task
calls, and the results (API and admin page) find the variant whose lists are genuinely better; concluding it makes
that variant's settings what the surface serves.

The shoppers of the clustered world (tests/worlds.py) each have a hidden taste: the cluster they buy in. A shopper
reads a list from the top, moving on to the next slot with a fixed probability, and clicks only items of their
taste. The simulator never looks at the variant: a variant earns more clicks only by putting the shopper's kind of
item where the shopper looks. The control serves the surface's current default, a large exploration share that
pushes the personal picks down the list; the challenger serves the plain pipeline (trained model, ranker, diversity
cap, no exploration).
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from events.services import online_state_rebuild
from experiments import keys
from experiments.models import Experiment, SurfaceDefault
from experiments.services import assignment_cache_clear, impressions_flush
from kernel import redis_client
from ranking import rules, serving
from ranking import services as ranking_services
from ranking.artifacts import loader
from tests.worlds import SMALL_PARAMS, cluster_world, world_clear

CLUSTERS = (("wool", "scarf"), ("ceramic", "mug"), ("garden", "seed"), ("silver", "ring"))
CUSTOMERS_PER_CLUSTER = 20
KEY = "home-less-exploration"
EXPLORING_DEFAULT = {"exploration_share": 0.8}  # what the home page serves before the experiment
VISITS = 10  # home page views per shopper, interleaved across shoppers
COUNT = 10  # items per list
READ_ON = 0.8  # chance a shopper looks at the next slot after this one
CLICK_IF_LIKED = 0.35  # chance a shopper clicks an item of their taste they looked at
BUY_IF_CLICKED = 0.25
SEED = 20260301


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    """Four clusters of twelve items and twenty customers each (every customer buys six items of their cluster),
    committed once for the module, with a model trained and activated on it."""
    with django_db_blocker.unblock():
        built = cluster_world(
            clusters=CLUSTERS, per_cluster=12, seed=11, customers_per_cluster=CUSTOMERS_PER_CLUSTER,
            customer_prefix="e2e", event_prefix="e2e-w", session_prefix="e2e-o",
        )  # fmt: skip
        version = ranking_services.model_train(params=SMALL_PARAMS, force=True).version
        yield {**built, "version": version}
        world_clear()


@pytest.fixture(autouse=True)
def _fresh(world: dict[str, Any]) -> None:
    # Redis is emptied before every test (tests/conftest.py): rebuild the histories serving personalises from, as
    # after an import, and start every in-process cache empty.
    online_state_rebuild()
    serving.clear_caches()
    rules.reset()
    loader().reset()
    assignment_cache_clear()


@pytest.fixture
def staff(django_user_model: type[AbstractUser]) -> Client:
    user = django_user_model.objects.create_user("merchandiser", password="pw", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


@dataclass
class Arm:
    """What the simulator saw of one variant (its own bookkeeping, to check the results against)."""

    customers: set[str] = field(default_factory=set)
    impressions: int = 0
    clicked_impressions: int = 0
    buyers: set[str] = field(default_factory=set)
    revenue: float = 0.0
    personal_first: int = 0  # lists whose first item is of the customer's taste


def _start_in_admin(staff: Client) -> Experiment:
    """The merchandiser's path: the surface default, the experiment with its variants, then the start action."""
    response = staff.post(
        reverse("admin:experiments_surfacedefault_add"), {"surface": "home", "config": json.dumps(EXPLORING_DEFAULT)}
    )
    assert response.status_code == 302, response.content.decode()
    form: dict[str, str] = {
        "key": KEY, "name": "Home: less exploration", "surface": "home", "namespace": "", "namespace_start": "",
        "namespace_end": "", "mode": "ab",
        "hypothesis": "Most of the home list spent on exploration buries the picks shoppers came for.",
        "primary_metric": "ctr", "minimum_detectable_effect": "0.1", "attribution_window_hours": "24",
        "guardrails": '{"coverage": 0.05}', "hash_seed": "",
        "variants-TOTAL_FORMS": "2", "variants-INITIAL_FORMS": "0", "variants-MIN_NUM_FORMS": "2",
        "variants-MAX_NUM_FORMS": "1000",
        "variants-0-name": "control", "variants-0-is_control": "on", "variants-0-weight": "0.5",
        "variants-0-config": "{}",
        "variants-1-name": "focused", "variants-1-weight": "0.5", "variants-1-config": '{"exploration_share": 0.0}',
    }  # fmt: skip
    response = staff.post(reverse("admin:experiments_experiment_add"), form)
    assert response.status_code == 302, response.content.decode()
    experiment = Experiment.objects.get(key=KEY)
    response = staff.post(
        reverse("admin:experiments_experiment_changelist"),
        {"action": "start_selected", "_selected_action": [experiment.pk]},
        follow=True,
    )
    assert f"{KEY} started." in response.content.decode().lower()  # the admin capitalises messages
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.RUNNING
    return experiment


def _taste(customer_id: str) -> str:
    """The hidden preference: the noun of the cluster the customer buys in (customers are e2e<cluster>-<n>)."""
    return CLUSTERS[int(customer_id.removeprefix("e2e").split("-")[0])][1]


def _kind(item_id: str) -> str:
    return item_id.split("-")[0]  # items are <noun>-<n>


def _event(api: APIClient, customer: str, item: dict[str, Any], type_: str, request_id: str) -> None:
    body = {"customer_id": customer, "item_id": item["item_id"], "type": type_, "request_id": request_id}
    if type_ == "purchase":
        body["value"] = item["price"]
    response = api.post("/v1/events", body, format="json")
    assert response.status_code == 202, response.content


def _shop(api: APIClient, customers: list[str], rng: np.random.Generator) -> dict[str, Arm]:
    """Every customer views the home page VISITS times; clicks and purchases go back with the list's request id."""
    arms: dict[str, Arm] = defaultdict(Arm)
    variant_of: dict[str, str] = {}
    for _ in range(VISITS):
        for customer in customers:
            response = api.get("/v1/recommendations", {"customer_id": customer, "surface": "home", "count": COUNT})
            assert response.status_code == 200, response.content
            body = response.json()
            assert body["experiment"] == KEY
            assert variant_of.setdefault(customer, body["variant"]) == body["variant"]  # sticky assignment
            assert len(body["items"]) == COUNT
            # Personal lists (checked per arm below): were the histories lost, or serving degraded, neither arm
            # could be better and the comparison would mean nothing.
            assert body["degraded"] is False
            arm = arms[body["variant"]]
            arm.personal_first += _kind(body["items"][0]["item_id"]) == _taste(customer)
            arm.customers.add(customer)
            arm.impressions += 1
            clicked = False
            for position, item in enumerate(body["items"]):
                if position and rng.random() >= READ_ON:
                    break
                if _kind(item["item_id"]) != _taste(customer) or rng.random() >= CLICK_IF_LIKED:
                    continue
                _event(api, customer, item, "click", body["request_id"])
                clicked = True
                if rng.random() < BUY_IF_CLICKED:
                    _event(api, customer, item, "purchase", body["request_id"])
                    arm.buyers.add(customer)
                    arm.revenue += item["price"]
            arm.clicked_impressions += clicked
    return arms


def _primary_rows(html: str) -> dict[str, list[str]]:
    """The primary metric's table on the results page: variant label -> its cells (text, with the cell's class)."""
    section = html.split("Click-through rate (primary)</h2>", 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>", 1)[1], re.S):
        cells = [
            (cls.strip() + "|" if cls.strip() else "") + " ".join(unescape(re.sub(r"<[^>]+>", " ", text)).split())
            for cls, text in re.findall(r'<td(?: class="([^"]*)")?>(.*?)</td>', row, re.S)
        ]
        rows[cells[0]] = cells[1:]
    return rows


class _SeededRequestIds:
    """Stands in for the uuid module in ranking.serving: request ids drawn from a seeded generator. A list's
    exploration is seeded by its request id, so with random ids every run shops a different experiment (over 24
    runs of this test the interval's lower bound ranged from 0.0003 to 0.127); seeded, the run is reproducible."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)


@pytest.mark.django_db
def test_the_better_variant_wins_on_real_traffic_and_concluding_promotes_it(
    api: APIClient,
    admin_api: APIClient,
    staff: Client,
    world: dict[str, Any],
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serving, "uuid", _SeededRequestIds(SEED))
    experiment = _start_in_admin(staff)
    customers = [c.external_id for c in world["customers"]]

    arms = _shop(api, customers, np.random.default_rng(SEED))
    # The challenger (no exploration) leads with the customer's taste: its lists are personal. Not every one: a
    # shopper who has already seen every item of their cluster has no unseen neighbours left (neighbour sources
    # never recommend a recent item back), and then trending may lead.
    assert arms["focused"].personal_first >= 0.8 * arms["focused"].impressions, arms["focused"]

    # What beat runs every 10 s, until the queue is empty.
    summary = impressions_flush()
    assert (summary.records, summary.rows_stored, summary.invalid) == (VISITS * len(customers),) * 2 + (0,)
    assert redis_client.get().llen(keys.IMPRESSIONS) == 0

    response = admin_api.get(f"/v1/experiments/{KEY}/results")
    assert response.status_code == 200, response.content
    results = response.json()
    assert (results["status"], results["primary_metric"]) == ("running", "ctr")
    by_name = {v["name"]: v for v in results["variants"]}
    assert list(by_name) == ["control", "focused"]
    for name, seen in arms.items():
        # The platform counts exactly what the shoppers did.
        variant = by_name[name]
        assert variant["exposures"] == len(seen.customers)
        assert variant["impressions"] == seen.impressions == VISITS * len(seen.customers)
        assert variant["clicks"] == seen.clicked_impressions
        assert variant["conversions"] == len(seen.buyers)
        assert variant["revenue"] == pytest.approx(seen.revenue)
    control, focused = by_name["control"], by_name["focused"]
    assert control["exposures"] + focused["exposures"] == len(customers)
    assert not results["srm_flagged"]
    assert results["srm_p_value"] > 0.001
    ctr = focused["ctr"]["vs_control"]
    assert focused["ctr"]["value"] > control["ctr"]["value"]
    assert ctr["difference"] > 0
    assert ctr["ci_low"] > 0
    assert ctr["p_value"] < 0.05
    # The Bayesian figure agrees with the test above (p < 0.05 two-sided: about 0.975 one-sided). Not 0.99: with
    # unseeded request ids (exploration seeds) runs differ, and one run measured 0.978 with p < 0.05.
    assert ctr["chance_to_beat_control"] > 0.975
    assert control["ctr"]["vs_control"] is None
    assert not results["guardrails_breached"]

    # The admin results page tells the same story: the focused variant leads, its whole interval above zero.
    page = staff.get(reverse("admin:experiments_experiment_results", args=[experiment.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    rows = _primary_rows(html)
    assert set(rows) == {"control (control)", "focused"}
    assert rows["control (control)"][1:] == ["num|–"] * 5
    value, difference, lift, p_value, _, beat = rows["focused"]
    assert value.startswith(f"num|{focused['ctr']['value'] * 100:.2f}% ({focused['clicks']}/{focused['impressions']})")
    assert difference.startswith(f"num better|+{ctr['difference'] * 100:.2f} pp")
    assert lift == f"num|{ctr['relative_lift'] * 100:+.1f}%"
    assert p_value in (f"num|{ctr['p_value']:.4f}", "num|< 0.0001")
    assert beat == f"num|{ctr['chance_to_beat_control'] * 100:.1f}%"
    assert "Sample ratio check: p = " in html
    assert "(no mismatch)" in html
    assert 'id="srm-warning"' not in html
    assert html.count("<svg") >= 2

    # Conclude with the winner: its settings become the home default and the experiment stops serving.
    conclude = reverse("admin:experiments_experiment_conclude", args=[experiment.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(conclude, {"winner": "focused"}, follow=True)
    assert "focused is now the home default" in response.content.decode()
    assert SurfaceDefault.objects.get(surface="home").config == {"exploration_share": 0.0}
    time.sleep(1.05)  # web processes look at the published version at most once a second
    former_control = next(c for c in customers if c in arms["control"].customers)
    body = api.get("/v1/recommendations", {"customer_id": former_control, "count": COUNT}).json()
    assert (body["experiment"], body["variant"]) == (None, None)
    # No exploration slot any more (the old default explored 8 of 10), and the customer's taste leads. (Not the
    # whole top three: after ten visits a shopper may have few unseen items of their cluster left, and neighbour
    # sources never recommend a recent item back.)
    assert [item["reason"]["code"] for item in body["items"] if item["reason"]["code"] == "discover"] == []
    assert _kind(body["items"][0]["item_id"]) == _taste(former_control)
    assert admin_api.get(f"/v1/experiments/{KEY}/results").json()["winner"] == "focused"
