"""Shared test worlds: clusters of items whose customers buy only within their cluster, committed once for a
test module (so real Celery workers and live servers see them), plus the small training parameters that suit
them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from catalog.models import Brand, Category, Customer, Item
from events.models import Interaction
from events.services import online_state_rebuild
from experiments.services import assignment_cache_clear
from ranking import rules, services, serving
from ranking.artifacts import loader
from ranking.models import BusinessRule, ModelVersion
from ranking.training import TrainParams

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SMALL_PARAMS = TrainParams(
    als_factors=8, als_iterations=10, neighbours_k=10, fbt_k=5, content_dims=8, content_k=5,
    half_life_days=None, history_half_life_days=None, validation_days=30, tune_budget_seconds=0,
    serve="pipeline",  # these tests are about the pipeline; the never-worse choice has its own tests
)  # fmt: skip


def cluster_world(
    *,
    clusters: Sequence[tuple[str, str]],
    per_cluster: int,
    seed: int,
    category_prefix: str = "k",
    customer_prefix: str = "u",
    event_prefix: str = "w",
    session_prefix: str = "o",
    category_name: str = "{noun}s",
    brands_per_cluster: int = 2,
    customers_per_cluster: int = 15,
    purchases_per_customer: int = 6,
) -> dict[str, Any]:
    """Items ``<noun>-<i>`` (titles "<Adjective> <noun> no. <i>") in one category per cluster; customers
    ``<customer_prefix><cluster>-<n>`` buy ``purchases_per_customer`` items of their cluster, two per order, over
    120 days. ``brands_per_cluster=0`` gives every item one shared brand."""
    rng = np.random.default_rng(seed)
    categories = [
        Category.objects.create(external_id=f"{category_prefix}{c}", name=category_name.format(noun=w[1].title()))
        for c, w in enumerate(clusters)
    ]
    if brands_per_cluster:
        brands = [
            Brand.objects.create(external_id=f"b{n}", name=f"Brand {n}")
            for n in range(brands_per_cluster * len(clusters))
        ]
    else:
        brands = [Brand.objects.create(external_id=f"{category_prefix}-brand", name="Brand")]

    def brand_of(c: int, i: int) -> Brand:
        return brands[brands_per_cluster * c + i % brands_per_cluster] if brands_per_cluster else brands[0]

    items = Item.objects.bulk_create(
        Item(external_id=f"{w[1]}-{i}", title=f"{w[0].title()} {w[1]} no. {i}", category=categories[c],
             brand=brand_of(c, i), price=5 + i, created_at=START)
        for c, w in enumerate(clusters) for i in range(per_cluster)
    )  # fmt: skip
    customers = Customer.objects.bulk_create(
        Customer(external_id=f"{customer_prefix}{c}-{n}")
        for c in range(len(clusters)) for n in range(customers_per_cluster)
    )  # fmt: skip
    events = []
    for n, customer in enumerate(customers):
        cluster = n // customers_per_cluster
        for k, item in enumerate(rng.choice(per_cluster, purchases_per_customer, replace=False)):
            events.append(Interaction(
                event_id=f"{event_prefix}{n}-{k}", customer=customer, item=items[cluster * per_cluster + int(item)],
                type=Interaction.Type.PURCHASE, session_id=f"{session_prefix}{n}-{k // 2}",
                occurred_at=START + dt.timedelta(days=float(rng.uniform(0, 120))),
            ))  # fmt: skip
    Interaction.objects.bulk_create(events)
    return {"items": items, "categories": categories, "customers": customers}


def trained_cluster_world(*, params: TrainParams = SMALL_PARAMS, **world: Any) -> dict[str, Any]:
    """:func:`cluster_world` with a model trained on it and activated: the world plus its ``"version"``."""
    built = cluster_world(**world)
    return {**built, "version": services.model_train(params=params, force=True).version}


def serving_reset() -> None:
    """Forget what this process's serving keeps between requests (list caches, rule and experiment snapshots, the
    loaded model), so a test serves from the database and Redis as they are now."""
    serving.clear_caches()
    rules.reset()
    loader().reset()
    assignment_cache_clear()


def world_clear() -> None:
    """Delete everything a world (and the tests on it) created, dependants first."""
    for model in (Interaction, BusinessRule, ModelVersion, Item, Customer, Brand, Category):
        model.objects.all().delete()


def trained_world_fixtures(
    *, rebuild_online_state: bool = False, **world: Any
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A test module's ``world`` fixture (:func:`trained_cluster_world`, committed once for the module so real
    workers and live servers see it, cleared after it) and its autouse ``_fresh`` (:func:`serving_reset` before each
    test; with ``rebuild_online_state``, the world's events in the online state and its completeness marker too).
    A module takes them as ``world, _fresh = trained_world_fixtures(...)``."""

    @pytest.fixture(scope="module", name="world")
    def world_fixture(django_db_setup: None, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
        with django_db_blocker.unblock():
            yield trained_cluster_world(**world)
            world_clear()

    @pytest.fixture(autouse=True, name="_fresh")
    def fresh(world: dict[str, Any]) -> None:
        serving_reset()
        if rebuild_online_state:
            online_state_rebuild()

    return world_fixture, fresh
