"""A world where only the learned ranker can win: customers buy old items of their cluster for three months, then,
in the last month, the new arrivals of their cluster. No collaborative source can rank items nobody had bought
before the validation split; the ranker can, from the features serving also computes (new-arrival rank, age,
category affinity). Times are relative to now, so the items' ages mean the same offline and when served."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from django.utils import timezone

from catalog.models import Brand, Category, Customer, Item
from events.models import Interaction
from ranking.training import TrainParams

CLUSTERS = (
    ("wool", "scarf"), ("ceramic", "mug"), ("garden", "seed"), ("silver", "ring"), ("oak", "table"),
    ("linen", "shirt"),
)  # fmt: skip
OLD_PER_CLUSTER = 12
NEW_PER_CLUSTER = 3
NEW_LISTED_DAY = 80  # the validation split is at about day 90: the new items exist then, nobody has bought them
# PARAMS as `train` / `evaluate` arguments.
PARAM_ARGS = [
    "--param", "als_factors=8", "--param", "als_iterations=10", "--param", "als_regularization=1.0",
    "--param", "neighbours_k=10", "--param", "fbt_k=5", "--param", "content_dims=8", "--param", "content_k=5",
    "--param", "half_life_days=null", "--param", "history_half_life_days=null", "--param", "tune_budget_seconds=0",
]  # fmt: skip
PARAMS = TrainParams(
    als_factors=8, als_iterations=10, als_regularization=1.0, neighbours_k=10, fbt_k=5, content_dims=8,
    content_k=5, half_life_days=None, history_half_life_days=None, validation_days=30, tune_budget_seconds=0,
)  # fmt: skip


def new_arrivals_world(
    *, buyers_per_cluster: int = 20, observers_per_cluster: int = 3, seed: int = 5
) -> dict[str, Any]:
    """Per cluster (one category each): 12 items listed 120 days ago, 3 listed on day 80; buyers buy four old
    items (two orders) before day 80 and two of the new ones after day 95; observers only buy old items."""
    rng = np.random.default_rng(seed)
    start = timezone.now() - dt.timedelta(days=120)
    brand = Brand.objects.create(external_id="rw-brand", name="Brand")
    categories = [
        Category.objects.create(external_id=f"rw{c}", name=f"{noun.title()}s") for c, (_, noun) in enumerate(CLUSTERS)
    ]
    old: list[list[Item]] = []
    new: list[list[Item]] = []
    for c, (adjective, noun) in enumerate(CLUSTERS):
        old.append(Item.objects.bulk_create(
            Item(external_id=f"{noun}-{i}", title=f"{adjective.title()} {noun} no. {i}", category=categories[c],
                 brand=brand, price=5 + i, created_at=start)
            for i in range(OLD_PER_CLUSTER)
        ))  # fmt: skip
        new.append(Item.objects.bulk_create(
            Item(external_id=f"{noun}-new-{i}", title=f"New {adjective} {noun} no. {i}", category=categories[c],
                 brand=brand, price=20 + i, created_at=start + dt.timedelta(days=NEW_LISTED_DAY))
            for i in range(NEW_PER_CLUSTER)
        ))  # fmt: skip
    events: list[Interaction] = []
    observers: list[list[Customer]] = []

    def buy(customer: Customer, item: Item, day: float, order: str) -> None:
        events.append(Interaction(
            event_id=f"rw{len(events)}", customer=customer, item=item, type=Interaction.Type.PURCHASE,
            session_id=order, occurred_at=start + dt.timedelta(days=day),
        ))  # fmt: skip

    for c in range(len(CLUSTERS)):
        buyers = Customer.objects.bulk_create(Customer(external_id=f"rb{c}-{n}") for n in range(buyers_per_cluster))
        watchers = Customer.objects.bulk_create(
            Customer(external_id=f"ro{c}-{n}") for n in range(observers_per_cluster)
        )
        observers.append(watchers)
        for customer in [*buyers, *watchers]:
            for k, i in enumerate(rng.choice(OLD_PER_CLUSTER, 4, replace=False).tolist()):
                buy(customer, old[c][i], float(rng.uniform(0, NEW_LISTED_DAY - 2)), f"{customer.external_id}-{k // 2}")
        for customer in buyers:
            day = float(rng.uniform(95, 119))
            for i in rng.choice(NEW_PER_CLUSTER, 2, replace=False).tolist():
                buy(customer, new[c][i], day, f"{customer.external_id}-new")
    Interaction.objects.bulk_create(events)
    return {"old": old, "new": new, "observers": observers, "categories": categories}
