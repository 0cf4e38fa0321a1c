"""A model version activated while storefront traffic is running: no request fails, each response is served by one
whole version (the old or the new), and once the web process has noticed the activation only the new one is served.

Transactional (``transaction=True``): the request threads use their own database connections, which only see
committed rows, as gunicorn threads do.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from experiments.services import assignment_cache_clear
from ranking import rules, services, serving
from ranking.artifacts import loader
from tests.worlds import SMALL_PARAMS, cluster_world, world_clear

CLUSTERS = (("linen", "towel"), ("brass", "lamp"), ("oak", "stool"))
THREADS = 4
COUNT = 5
# The loader looks at the active-version marker at most once a second; give it that and some slack.
NOTICE_SECONDS = 1.0 + 1.5


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    with django_db_blocker.unblock():
        built = cluster_world(clusters=CLUSTERS, per_cluster=10, seed=5, category_prefix="hs", customer_prefix="h")
        version = services.model_train(params=SMALL_PARAMS, force=True).version
        yield {**built, "version": version}
        world_clear()


@dataclass(frozen=True)
class Served:
    thread: int
    started: float
    status: int
    model_version: int | None
    items: int
    sources_ok: bool


def _traffic(n: int, client: APIClient, stop: threading.Event, out: list[Served], errors: list[BaseException]) -> None:
    customers = [f"h{c}-{k}" for c in range(len(CLUSTERS)) for k in range(3)] + ["hot-swap-cold"]
    k = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            response = client.get("/v1/recommendations", {"customer_id": customers[k % len(customers)], "count": COUNT})
            body = response.json() if response.status_code == 200 else {}
            out.append(Served(
                n, started, response.status_code, body.get("model_version"), len(body.get("items", [])),
                all(item["sources"] and item["reason"]["code"] for item in body.get("items", [])),
            ))  # fmt: skip
            k += 1
    except BaseException as exc:  # noqa: BLE001 - reported to the test thread, which fails on it
        errors.append(exc)
    finally:
        connection.close()  # this thread's connection, or the test database cannot be flushed


@pytest.mark.django_db(transaction=True)
# Ten customers asked in a loop for as long as a training takes: the per-customer rate limit is not under test.
@override_settings(API_CUSTOMER_RATE_PER_MINUTE=10**9)
def test_activation_under_concurrent_traffic(world: dict[str, Any], make_api_client: Any) -> None:
    serving.clear_caches()
    rules.reset()
    loader().reset()
    assignment_cache_clear()
    old = world["version"].pk
    key_client = make_api_client("recommend")
    stop = threading.Event()
    served: list[list[Served]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    threads = []
    for n in range(THREADS):
        client = APIClient()
        client._credentials = dict(key_client._credentials)  # the same API key, one client per thread
        threads.append(threading.Thread(target=_traffic, args=(n, client, stop, served[n], errors), daemon=True))
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # traffic on the old version first
        new = services.model_train(params=SMALL_PARAMS.replace(als_factors=6), force=True).version.pk
        activated = time.monotonic()
        deadline = activated + NOTICE_SECONDS + 10.0
        # Keep the traffic going until every thread has had a full second of requests after the notice period.
        while time.monotonic() < deadline and not errors:
            if all(any(s.started > activated + NOTICE_SECONDS + 1.0 for s in list(mine)) for mine in served):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors
    everything = [s for mine in served for s in mine]
    assert len(everything) > 20 * THREADS
    assert all(s.status == 200 for s in everything), Counter(s.status for s in everything)
    assert all(s.items == COUNT and s.sources_ok for s in everything)
    assert {s.model_version for s in everything} == {old, new}
    for mine in served:
        versions = [s.model_version for s in mine]
        # Per thread the switch happens once: never back to the old version after the new one was served.
        first_new = versions.index(new)
        assert set(versions[first_new:]) == {new}
        assert set(versions[:first_new]) <= {old}
        assert [s.model_version for s in mine if s.started > activated + NOTICE_SECONDS] != []
        assert {s.model_version for s in mine if s.started > activated + NOTICE_SECONDS} == {new}


@pytest.mark.django_db(transaction=True)
def test_an_experiment_arm_serves_the_version_it_names(make_api_client: Any) -> None:
    """A variant's model_version was accepted and ignored: both arms served the active version, so an A/B test of a
    new model compared two identical arms (found 5 December). The arm naming an older version serves it, beside
    the active one; a version that does not exist falls back to the active one."""
    from experiments import services as experiment_services
    from experiments.validation import VariantSpec

    cluster_world(clusters=CLUSTERS, per_cluster=10, seed=5, category_prefix="hs", customer_prefix="h")
    old = services.model_train(params=SMALL_PARAMS, force=True).version.pk
    new = services.model_train(params=SMALL_PARAMS.replace(als_factors=6), force=True).version.pk
    assert new != old
    loader().refresh()
    experiment = experiment_services.experiment_create(
        key="model-ab", name="model A/B", surface="home",
        variants=[VariantSpec("control", 0.5, True), VariantSpec("old", 0.25, False, {"model_version": old}),
                  VariantSpec("gone", 0.25, False, {"model_version": 10**9})],
    )  # fmt: skip
    user = get_user_model().objects.create_user("model-ab")
    experiment_services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    assignment_cache_clear()
    admin = make_api_client("admin")
    served = {}
    for arm in ("control", "old", "gone"):
        response = admin.get(
            "/v1/recommendations", {"customer_id": "h0-1", "count": COUNT}, HTTP_X_EXPERIMENT_VARIANT=f"model-ab:{arm}"
        )
        assert response.status_code == 200, response.content
        served[arm] = response.json()["model_version"]
    assert served == {"control": new, "old": old, "gone": new}
