"""A draft rule tried on recent traffic (ranking/dry_run.py), on the real servers: simulated shoppers with a planted
preference are served through the public API (impressions flushed as the beat task does, clicks sent back with the
list's request id), then a draft rule is tried. The dry run's "lists changed" equals a brute-force re-serve of the
same requests before and after publishing the draft; its click estimate's interval covers the effect the planted
preference really has on those lists; the API, the admin and the command show the same run; a Celery worker runs
it with progress."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import AbstractUser
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from catalog.models import Category, Item
from events.services import online_state_rebuild
from experiments.models import Impression
from experiments.services import assignment_cache_clear, impressions_flush
from ranking import dry_run, rules, serving
from ranking import services as ranking_services
from ranking.artifacts import loader
from ranking.models import BusinessRule
from tests.worlds import SMALL_PARAMS, cluster_world, world_clear

CLUSTERS = (("wool", "scarf"), ("ceramic", "mug"), ("garden", "seed"), ("silver", "ring"))
COUNT = 10
VISITS = 3
# The planted preference: every shopper likes rings, whatever their own taste. A shopper examines the slot at
# position p (1-based) with probability 1/log2(p + 1) and clicks an examined item with its category's chance.
CLICK_CHANCE = {"ring": 0.5}
OTHER_CHANCE = 0.05
SEED = 20261205


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    with django_db_blocker.unblock():
        built = cluster_world(
            clusters=CLUSTERS, per_cluster=12, seed=5, customer_prefix="dr", event_prefix="dr-w",
            session_prefix="dr-o",
        )  # fmt: skip
        version = ranking_services.model_train(params=SMALL_PARAMS, force=True).version
        yield {**built, "version": version}
        world_clear()


@pytest.fixture(autouse=True)
def _fresh(world: dict[str, Any]) -> None:
    online_state_rebuild()
    serving.clear_caches()
    rules.reset()
    loader().reset()
    assignment_cache_clear()


@pytest.fixture
def staff(django_user_model: type[AbstractUser]) -> Client:
    user = django_user_model.objects.create_user("merch", password="pw", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


def _chance(item_id: str) -> float:
    return CLICK_CHANCE.get(item_id.split("-")[0], OTHER_CHANCE)


def _shop(api: APIClient, customers: list[str], rng: np.random.Generator, visits: int = VISITS) -> int:
    """Every customer views the home page ``visits`` times; clicks go back with the list's request id. Then the
    impressions are flushed, as the beat task does. The number of lists served."""
    served = 0
    for _ in range(visits):
        for customer in customers:
            response = api.get("/v1/recommendations", {"customer_id": customer, "surface": "home", "count": COUNT})
            assert response.status_code == 200, response.content
            body = response.json()
            served += 1
            for position, item in enumerate(body["items"], start=1):
                if rng.random() < 1 / np.log2(position + 1) and rng.random() < _chance(item["item_id"]):
                    event = {"customer_id": customer, "item_id": item["item_id"], "type": "click",
                             "request_id": body["request_id"]}  # fmt: skip
                    response = api.post("/v1/events", event, format="json")
                    assert response.status_code == 202, response.content
    summary = impressions_flush()
    assert summary.rows_stored == served
    return served


def _draft(**fields: Any) -> BusinessRule:
    ring = Category.objects.get(name="Rings")
    defaults = {"name": "Rings up", "kind": "boost", "target": "category", "category": ring, "weight": 1.0,
                "status": BusinessRule.Status.DRAFT}  # fmt: skip
    return BusinessRule.objects.create(**{**defaults, **fields})


def _brute_force(requests: list[Impression]) -> list[list[str]]:
    """Each logged request served again through the public service (no cache, not logged)."""
    lists = []
    for row in requests:
        result = serving.recommend(
            serving.RecommendRequest(
                customer_id=row.customer.external_id if row.customer else "", session_id=row.session_id,
                surface=row.surface, count=len(row.item_pks), debug=True, log_impression=False,
            )
        )  # fmt: skip
        lists.append([item.item_id for item in result.items])
    return lists


@pytest.mark.django_db
def test_lists_changed_equals_a_brute_force_re_serve_and_the_estimate_covers_the_planted_effect(
    api: APIClient, world: dict[str, Any]
) -> None:
    customers = [c.external_id for c in world["customers"]]
    served = _shop(api, customers, np.random.default_rng(SEED))
    draft = _draft()
    rules.reset()

    result = dry_run.rule_dry_run(rule_id=draft.pk, days=1, sample=dry_run.MAX_SAMPLE)
    assert result["lists"] == served  # the sample is every logged request

    logged = list(Impression.objects.select_related("customer").order_by("pk"))
    before = _brute_force(logged)
    draft.status = BusinessRule.Status.PUBLISHED
    draft.save()
    rules.version_bump()
    after = _brute_force(logged)
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert 0 < changed < served  # a ring boost changes the lists of shoppers whose lists had room for it
    assert result["lists_changed"] == changed
    assert result["share_changed"] == pytest.approx(changed / served, abs=1e-4)

    # The true effect of the draft under the planted preference, on the very lists it produces.
    def expected_clicks(lists: list[list[str]]) -> float:
        return sum(_chance(item) / np.log2(p + 1) for items in lists for p, item in enumerate(items, start=1))

    truth = expected_clicks(after) / expected_clicks(before) - 1
    clicks = result["estimate"]["clicks"]
    assert clicks["estimate"] is True
    assert truth > 0.05  # the planted preference makes the boost worth something
    low, high = clicks["interval"]
    assert low <= truth <= high, (truth, clicks)
    assert low > 0  # and the estimate sees it

    # The tables: rings gained, something was pushed out, the category mix moved towards rings.
    rings = {row["name"]: row for row in result["categories"]}["Rings"]
    assert rings["after"] > rings["before"]
    assert result["pushed_out"]
    assert all(row["lists_left"] > 0 for row in result["pushed_out"])
    ring_rows = [row for row in result["items"] if row["item_id"].startswith("ring-")]
    assert ring_rows
    assert all(row["lists_entered"] + row["positions_gained"] > 0 for row in ring_rows)
    pushed = {row["item_id"] for row in result["pushed_out"]}
    gone = {a for b, c in zip(before, after, strict=True) for a in b if a not in c}
    assert pushed <= gone


@pytest.mark.django_db
def test_serving_ignores_a_draft_until_it_is_published(api: APIClient, world: dict[str, Any]) -> None:
    item = Item.objects.get(external_id="ring-3")
    draft = BusinessRule.objects.create(name="pin", kind="pin", target="item", item=item, position=1,
                                        status=BusinessRule.Status.DRAFT)  # fmt: skip
    rules.version_bump()
    body = api.get("/v1/recommendations", {"customer_id": "dr0-1", "count": COUNT}).json()
    assert body["items"][0]["item_id"] != "ring-3"
    draft.status = BusinessRule.Status.PUBLISHED
    draft.save()
    rules.version_bump()
    body = api.get("/v1/recommendations", {"customer_id": "dr0-1", "count": COUNT}).json()
    assert body["items"][0]["item_id"] == "ring-3"


@pytest.mark.django_db
def test_a_change_to_a_published_rule_replaces_it_in_the_dry_run(api: APIClient, world: dict[str, Any]) -> None:
    _shop(api, [c.external_id for c in world["customers"][:20]], np.random.default_rng(1), visits=1)
    live = _draft(status=BusinessRule.Status.PUBLISHED, kind="block")
    rules.version_bump()
    change = _draft(replaces=live, kind="boost")  # the change: unblock rings and boost them instead
    published = rules.published_rules()
    base, drafted = dry_run.draft_rule_set(change, published=published, surface="home", at=time.time())
    assert [r.rule_id for r in base] == [live.pk]
    assert [(r.rule_id, r.kind) for r in drafted] == [(change.pk, "boost")]
    result = dry_run.rule_dry_run(rule_id=change.pk, days=1, sample=100)
    rings = {row["name"]: row for row in result["categories"]}["Rings"]
    assert rings["before"] == 0 < rings["after"]  # blocked before, boosted after
    # Trying the live rule itself with its own settings changes nothing.
    same = dry_run.rule_dry_run(rule_id=live.pk, days=1, sample=100)
    assert same["lists_changed"] == 0
    assert same["lists"] == result["lists"] > 0


@pytest.mark.django_db
def test_command_prints_the_tables(api: APIClient, world: dict[str, Any]) -> None:
    _shop(api, [c.external_id for c in world["customers"][:20]], np.random.default_rng(2), visits=1)
    draft = _draft()
    out = io.StringIO()
    call_command("rule_dry_run", str(draft.pk), "--days", "1", "--sample", "50", stdout=out)
    text = out.getvalue()
    assert "Lists changed:" in text
    assert "of 20" in text
    assert "Category mix" in text
    assert "Rings" in text
    assert "Estimate (not a measurement)" in text


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[" * 5000 + "]" * 5000, "nested 5000 levels deep"),  # was a RecursionError traceback
        ('{"max_per_brand": ' + "9" * 5000 + "}", "Exceeds the limit"),  # was a ValueError traceback
        ("[1]", "must be a JSON object"),
    ],
)
def test_the_commands_config_that_is_no_usable_json_is_a_clear_error(config: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("rule_dry_run", "1", "--config", config)


@pytest.mark.django_db
def test_a_dry_run_says_when_it_had_nothing_to_replay_or_nothing_on_the_rules_surfaces(
    api: APIClient, world: dict[str, Any]
) -> None:
    """ "Lists changed: 0 of 0", or "0 of 500" for a rule on a surface the replay never meets, read like "this rule
    changes nothing" (an eighth tester, 6 December)."""
    empty = dry_run.rule_dry_run(rule_id=_draft().pk, days=0.001, sample=100)
    assert empty["lists"] == 0
    assert "nothing to replay" in empty["notes"][0]
    _shop(api, [c.external_id for c in world["customers"][:10]], np.random.default_rng(3), visits=1)
    elsewhere = dry_run.rule_dry_run(rule_id=_draft(surfaces=["similar", "newsurface"]).pk, days=1, sample=100)
    assert elsewhere["lists"] > 0
    assert elsewhere["lists_changed"] == 0
    assert "was on this rule's surfaces (similar, newsurface)" in elsewhere["notes"][0]
    assert "similar, newsurface are not replayed" in elsewhere["notes"][0]
    assert dry_run.rule_dry_run(rule_id=_draft(surfaces=["home"]).pk, days=1, sample=100)["notes"] == []
    partly = dry_run.rule_dry_run(rule_id=_draft(surfaces=["home", "similar"]).pk, days=1, sample=100)
    assert partly["notes"][0].startswith("Its effect on similar is not counted")
    disabled = dry_run.rule_dry_run(rule_id=_draft(enabled=False).pk, days=1, sample=100)
    assert "disabled" in disabled["notes"][0]
    out = io.StringIO()
    call_command("rule_dry_run", str(_draft(surfaces=["similar"]).pk), "--days", "1", stdout=out)
    assert "Note: None of the" in out.getvalue()


@pytest.mark.django_db
def test_api_validates_naming_the_field(admin_api: APIClient, api: APIClient, world: dict[str, Any]) -> None:
    assert api.post("/v1/rules/dry-runs", {"rule_id": 1}, format="json").status_code == 403
    for body, field in (
        ({"rule_id": 999999}, "rule_id"),
        ({"rule_id": "x"}, "rule_id"),
        ({}, "rule_id"),
        ({"rule_id": _draft().pk, "days": 0}, "days"),
        ({"rule_id": _draft().pk, "days": 91}, "days"),
        ({"rule_id": _draft().pk, "sample": 10**6}, "sample"),
        ({"rule_id": _draft().pk, "config": {"nope": 1}}, "config.nope"),
        ({"rule_id": _draft().pk, "config": {"diversity_cap": "high"}}, "config.diversity_cap"),
        ({"rule_id": _draft().pk, "config": {"diversity_cap": 0}}, "config.diversity_cap"),  # serving needs > 0
        ({"rule_id": _draft().pk, "config": []}, "config"),
    ):
        response = admin_api.post("/v1/rules/dry-runs", body, format="json")
        assert response.status_code == 400, (body, response.content)
        assert field in response.json(), (body, response.json())
    assert admin_api.get("/v1/rules/dry-runs/not-a-run").status_code == 404


def test_compare_counts_moves_entries_and_push_outs_by_hand() -> None:
    base = [np.array([1, 2, 3]), np.array([4, 5, 6]), np.array([7, 8])]
    draft = [np.array([3, 1, 2]), np.array([4, 5, 6]), np.array([9, 7])]
    result = dry_run.compare(base=base, draft=draft, category_of={1: 10, 2: 10, 3: 20, 7: 20, 8: 10, 9: 30})
    assert (result["lists"], result["lists_changed"], result["items_affected"]) == (3, 2, 6)
    rows = {row["pk"]: row for row in result["items"]}
    assert rows[3]["positions_gained"] == 2
    assert rows[1]["positions_gained"] == rows[2]["positions_gained"] == -1
    assert rows[7]["positions_gained"] == -1
    assert (rows[9]["lists_entered"], rows[8]["lists_left"]) == (1, 1)
    assert result["pushed_out"] == [{"pk": 8, "lists_left": 1}]
    mix = {row["category"]: (row["before"], row["after"]) for row in result["categories"]}
    assert mix[30] == (0.0, 0.125)  # one slot of eight
    assert mix[-1] == (0.375, 0.375)  # items 4, 5, 6 have no category here


@pytest.mark.django_db
def test_a_diversity_setting_alone_can_be_tried(api: APIClient, world: dict[str, Any]) -> None:
    _shop(api, [c.external_id for c in world["customers"][:20]], np.random.default_rng(4), visits=1)
    result = dry_run.rule_dry_run(rule_id=None, days=1, sample=100, config_changes={"diversity_cap": 1.0})
    assert result["lists"] == 20
    assert result["lists_changed"] > 0
    top = max(result["categories"], key=lambda row: row["after"])
    assert top["after"] > 0.3  # the default cap held every category to 30% of a list
    assert max(row["before"] for row in result["categories"]) <= 0.3 + 1e-9


RULES = "/admin/ranking/businessrule/"


@pytest.mark.django_db
def test_admin_starts_rules_as_drafts_and_publishes_a_draft_change_onto_its_rule(
    staff: Client, world: dict[str, Any]
) -> None:
    form = staff.get(f"{RULES}add/").content.decode()
    assert '<option value="draft" selected>' in form
    ring = Category.objects.get(name="Rings")
    live = BusinessRule.objects.create(name="Rings", kind="boost", target="category", category=ring, weight=0.2)
    assert staff.post(RULES, {"action": "draft_copy", "_selected_action": [live.pk]}).status_code == 302
    draft = BusinessRule.objects.get(replaces=live)
    assert (draft.status, draft.name, draft.weight) == ("draft", "Rings (draft)", 0.2)
    change = staff.get(f"{RULES}{draft.pk}/change/").content.decode()
    assert 'id="dry-run-link"' in change
    assert 'id="draft-note"' in change
    draft.weight = 0.9
    draft.save()
    page = staff.get(f"{RULES}{draft.pk}/dry-run/").content.decode()
    assert 'id="dry-run-form"' in page
    assert 'id="publish-submit"' in page
    assert f"replaces rule {live.pk}" in page
    assert staff.post(f"{RULES}{draft.pk}/publish/").status_code == 302
    live.refresh_from_db()
    assert (live.status, live.weight, live.name) == ("published", 0.9, "Rings")
    assert not BusinessRule.objects.filter(pk=draft.pk).exists()
    # A plain draft becomes published itself; the list action does the same.
    other = _draft(name="Another")
    assert staff.post(RULES, {"action": "publish", "_selected_action": [other.pk]}).status_code == 302
    assert BusinessRule.objects.get(pk=other.pk).status == "published"
    # Bad input on the page is a message, not an error page.
    bad = staff.post(f"{RULES}{other.pk}/dry-run/", {"days": "0", "sample": "10"})
    assert bad.status_code == 200
    assert "days must be" in bad.content.decode()
    bad = staff.post(f"{RULES}{other.pk}/dry-run/", {"days": "x", "sample": "10"})
    assert bad.status_code == 200
    assert "must be numbers" in bad.content.decode()
    bad = staff.post(f"{RULES}{other.pk}/dry-run/", {"days": "1", "sample": "10", "diversity_cap": "2"})
    assert "config.diversity_cap must be between 0 and 1" in bad.content.decode()
    assert staff.get(f"{RULES}{other.pk}/dry-run/nope/status/").status_code == 404


# Last in the module: a transactional test empties every table when it ends.
@pytest.mark.django_db(transaction=True)
def test_api_runs_it_on_a_celery_worker_and_the_admin_page_shows_it(
    celery_worker: object, make_api_client: Any, staff: Client, world: dict[str, Any]
) -> None:
    api = make_api_client("recommend", "events", "catalog")
    admin_api = make_api_client("admin")
    _shop(api, [c.external_id for c in world["customers"][:30]], np.random.default_rng(3), visits=1)
    draft = _draft()
    response = admin_api.post("/v1/rules/dry-runs", {"rule_id": draft.pk, "days": 1, "sample": 30}, format="json")
    assert response.status_code == 202, response.content
    run_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    deadline = time.monotonic() + 120
    seen = set()
    while True:
        body = admin_api.get(f"/v1/rules/dry-runs/{run_id}").json()
        seen.add(body["status"])
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body["status"] == "done", body
    assert body["done"] == body["total"] == 30
    assert body["result"]["lists"] == 30
    assert body["result"]["rule_id"] == draft.pk
    assert 0 <= body["result"]["lists_changed"] <= 30
    assert body["result"]["estimate"]["clicks"]["estimate"] is True
    # The admin's status endpoint (what the page polls) reads the same run.
    page = staff.get(f"/admin/ranking/businessrule/{draft.pk}/dry-run/{run_id}/status/")
    assert page.status_code == 200
    assert page.json()["status"] == "done"
    assert "Lists changed" in page.json()["html"]


@pytest.mark.django_db
def test_an_unexpected_failure_is_reported_without_its_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's status said "ValueError: <the message>" to its caller; the text stays in the worker's log."""

    def broken(**_: Any) -> dict[str, Any]:
        raise RuntimeError("SELECT secret FROM somewhere")

    monkeypatch.setattr(dry_run, "rule_dry_run", broken)
    with pytest.raises(RuntimeError):
        dry_run.run_execute(run_id="run-x", rule_id=None, days=1, sample=10, config_changes={})
    state = dry_run.run_status(run_id="run-x")
    assert state is not None
    assert state["status"] == "failed"
    assert "secret" not in state["error"]
    assert "run-x" in state["error"]


@pytest.mark.django_db
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_setting_that_is_not_a_finite_number_is_named(value: float) -> None:
    """``--config '{"max_per_brand": Infinity}'`` (json.loads takes it) ended in a traceback."""
    with pytest.raises(dry_run.DryRunError) as caught:
        dry_run.check_config_changes({"max_per_brand": value})
    assert caught.value.field == "config.max_per_brand"
