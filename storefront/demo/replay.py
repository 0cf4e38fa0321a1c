"""Replayed demo traffic: real recommendation lists served, day by day, to the demo customers who ordered on the last
days of the demo data, scored against what those customers actually ordered that day, so the quality dashboard has
figures to draw right after ``make run``.

Each list goes through the real serving pipeline (``ranking.serving.recommend``) for a throwaway session whose online
history is the customer's history as it was at the start of that day (point in time: nothing the customer did later
is visible to serving). The list is logged as an impression dated on a recent calendar day (the demo's last day maps
to yesterday) with a ``quality.REPLAY_PREFIX`` request id; every order of a recommended item that day becomes an
attributed click plus the attributed purchase itself. The day's figures are then computed by ``quality.services``,
exactly as for live traffic, and the dashboard labels them as replayed.

Honest limits, also said on the dashboard: the model was trained on the whole demo period, so it has seen the orders
it is scored on (the figures are optimistic), and lists are shown only to customers who ordered that day.
"""

from __future__ import annotations

import logging
import math
import time as clock
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from catalog import selectors as catalog_selectors
from events import keys as event_keys
from events import online
from events.models import Interaction
from experiments.models import Impression
from kernel import redis_client
from quality import services as quality
from quality.models import QualitySnapshot
from ranking import serving

logger = logging.getLogger(__name__)

SURFACE = "home"
HISTORY_LENGTH = online.HISTORY_LENGTH
# A visit starts a little before the customer's first order of the day; the list is served then.
VISIT_LEAD = timedelta(minutes=10)
CLICK_LEAD = timedelta(minutes=1)  # the click on a recommended item comes just before its order


@dataclass(frozen=True)
class ReplayedDay:
    demo_day: date  # the day of the demo data replayed
    day: date  # the calendar day its lists are dated on
    lists: int
    clicked: int  # lists with at least one ordered item (each such item is an attributed click and purchase)
    latency_p95_ms: float | None


@dataclass(frozen=True)
class ReplaySummary:
    days: tuple[ReplayedDay, ...]
    cleared: int  # impressions of an earlier replay removed first

    @property
    def lists(self) -> int:
        return sum(day.lists for day in self.days)

    @property
    def clicked(self) -> int:
        return sum(day.clicked for day in self.days)


def demo_traffic_exists() -> bool:
    return Impression.objects.filter(request_id__startswith=quality.REPLAY_PREFIX).exists()


@transaction.atomic
def demo_traffic_clear() -> int:
    """Undo an earlier replay: its impressions and clicks go, its purchases lose their attribution, and the days it
    filled are dropped (recomputed from what is left when live lists were served the same day). Returns how many
    replayed impressions were removed."""
    Interaction.objects.filter(event_id__startswith=quality.REPLAY_PREFIX).delete()
    Interaction.objects.filter(request_id__startswith=quality.REPLAY_PREFIX).update(request_id="")
    removed, _ = Impression.objects.filter(request_id__startswith=quality.REPLAY_PREFIX).delete()
    for snapshot in QualitySnapshot.objects.filter(by_surface__contains=[{"surface": quality.ALL}]):
        replayed, total = quality.replayed_share(snapshot)
        if not replayed:
            continue
        if replayed == total:
            snapshot.delete()
        else:
            quality.day_snapshot_compute(day=snapshot.date, latency_p95_ms=snapshot.latency_p95_ms)
    return removed


def demo_traffic_replay(
    *,
    days: int = 14,
    customers_per_day: int = 100,
    count: int = 10,
    seed: int = 0,
    today: date | None = None,
    on_list: Callable[[], None] | None = None,
) -> ReplaySummary:
    """Replay the last ``days`` days of the stored purchases as recommendation traffic (see the module docstring),
    replacing any earlier replay, and write each day's quality snapshot. Needs the online state in Redis only for
    the throwaway sessions it creates and deletes; a trained model makes the lists personal (without one serving
    falls back to popular items, as it would live). ``on_list`` is called after each list (progress bars)."""
    cleared = demo_traffic_clear()
    today = today or timezone.now().date()
    last = Interaction.objects.filter(type=Interaction.Type.PURCHASE, customer__isnull=False).aggregate(
        last=Max("occurred_at")
    )["last"]
    if last is None:
        return ReplaySummary((), cleared)
    last_day = last.astimezone(UTC).date()
    rng = np.random.default_rng(seed)
    replayed = []
    for n in range(days):
        demo_day = last_day - timedelta(days=days - 1 - n)
        day = today - timedelta(days=days - n)  # the demo's last day lands on yesterday
        replayed.append(_replay_day(demo_day, day, customers_per_day, count, rng, on_list))
    logger.info("demo_traffic_replayed", extra={"days": days, "lists": sum(d.lists for d in replayed)})
    return ReplaySummary(tuple(replayed), cleared)


def planned_lists(*, days: int, customers_per_day: int) -> int:
    """How many lists a replay serves (the progress bar's total): the sampled buyers of each replayed day."""
    last = Interaction.objects.filter(type=Interaction.Type.PURCHASE, customer__isnull=False).aggregate(
        last=Max("occurred_at")
    )["last"]
    if last is None:
        return 0
    start = datetime.combine(last.astimezone(UTC).date() - timedelta(days=days - 1), time(), tzinfo=UTC)
    buyers = (
        Interaction.objects.filter(type=Interaction.Type.PURCHASE, customer__isnull=False, occurred_at__gte=start)
        .values("occurred_at__date")
        .annotate(buyers=Count("customer_id", distinct=True))
        .values_list("buyers", flat=True)
    )
    return sum(min(n, customers_per_day) for n in buyers)


@dataclass(frozen=True)
class _Order:
    interaction_pk: int
    item_pk: int
    occurred_at: datetime


def _replay_day(
    demo_day: date,
    day: date,
    customers_per_day: int,
    count: int,
    rng: np.random.Generator,
    on_list: Callable[[], None] | None,
) -> ReplayedDay:
    start = datetime.combine(demo_day, time(), tzinfo=UTC)
    dated = datetime.combine(day, time(), tzinfo=UTC)
    orders: dict[int, list[_Order]] = defaultdict(list)
    for pk, customer_pk, item_pk, occurred_at in Interaction.objects.filter(
        type=Interaction.Type.PURCHASE, customer__isnull=False, occurred_at__gte=start,
        occurred_at__lt=start + timedelta(days=1),
    ).values_list("pk", "customer_id", "item_id", "occurred_at"):  # fmt: skip
        orders[customer_pk].append(_Order(pk, item_pk, occurred_at))
    buyers = sorted(orders)
    chosen = sorted(rng.choice(buyers, size=min(customers_per_day, len(buyers)), replace=False).tolist())
    # The customer's history as it was when the day began, moved in time so that moment is "now" for serving.
    shift = clock.time() - start.timestamp()
    impressions, clicks, attributed, latencies = [], [], [], []
    for customer_pk in chosen:
        session = f"replay{demo_day:%Y%m%d}c{customer_pk}"
        owner = event_keys.owner_for(customer_id="", session_id=session)
        history = Interaction.objects.filter(customer_id=customer_pk, occurred_at__lt=start).order_by("-occurred_at")[
            :HISTORY_LENGTH
        ]
        members = {
            online.history_member(item_pk=item_pk, type_=type_, interaction_pk=pk): occurred_at.timestamp() + shift
            for pk, item_pk, type_, occurred_at in history.values_list("pk", "item_id", "type", "occurred_at")
        }
        if members:
            online.write_histories({owner: members})
        started = clock.perf_counter()
        try:
            result = serving.recommend(
                serving.RecommendRequest(session_id=session, surface=SURFACE, count=count, log_impression=False)
            )
        finally:
            redis_client.get().unlink(
                event_keys.history(owner), event_keys.affinity(owner), event_keys.cache_version(owner)
            )
        latencies.append(clock.perf_counter() - started)
        pks_by_id = catalog_selectors.item_pks(external_ids=[item.item_id for item in result.items])
        item_pks = [pks_by_id[item.item_id] for item in result.items if item.item_id in pks_by_id]
        request_id = f"{quality.REPLAY_PREFIX}{demo_day:%Y%m%d}-{customer_pk}"
        first_order = min(order.occurred_at for order in orders[customer_pk])
        impressions.append(
            Impression(
                request_id=request_id, served_at=max(dated, dated + (first_order - start) - VISIT_LEAD),
                surface=SURFACE, customer_id=customer_pk, session_id=session, model_version=result.model_version,
                item_pks=item_pks,
            )
        )  # fmt: skip
        shown = set(item_pks)
        clicked: set[int] = set()
        for order in orders[customer_pk]:
            if order.item_pk not in shown:
                continue
            attributed.append((order.interaction_pk, request_id))
            if order.item_pk not in clicked:
                clicked.add(order.item_pk)
                clicks.append(
                    Interaction(
                        event_id=f"{request_id}:{order.item_pk}:click", customer_id=customer_pk,
                        item_id=order.item_pk, type=Interaction.Type.CLICK,
                        occurred_at=order.occurred_at - CLICK_LEAD, request_id=request_id,
                    )
                )  # fmt: skip
        if on_list is not None:
            on_list()
    with transaction.atomic():
        Impression.objects.bulk_create(impressions, ignore_conflicts=True)
        Interaction.objects.bulk_create(clicks, ignore_conflicts=True)
        by_request: dict[str, list[int]] = defaultdict(list)
        for interaction_pk, request_id in attributed:
            by_request[request_id].append(interaction_pk)
        for request_id, interaction_pks in by_request.items():
            Interaction.objects.filter(pk__in=interaction_pks, request_id="").update(request_id=request_id)
    p95 = _p95_ms(latencies)
    quality.day_snapshot_compute(day=day, latency_p95_ms=p95)
    return ReplayedDay(demo_day, day, len(impressions), len({rid for _, rid in attributed}), p95)


def _p95_ms(seconds: list[float]) -> float | None:
    """The nearest-rank 95th percentile, in milliseconds."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] * 1000
