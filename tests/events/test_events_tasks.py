"""events.tasks on a real Celery worker: fold_item_counters folds what the API counted."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from rest_framework.test import APIClient

from events import selectors
from events.tasks import fold_item_counters, rebuild_online_state
from kernel import redis_client
from tests.factories import ItemFactory


@pytest.mark.django_db(transaction=True)
def test_fold_item_counters_runs_on_the_worker(api: APIClient, celery_worker: object) -> None:
    shoe, hat = ItemFactory(external_id="shoe"), ItemFactory(external_id="hat")
    now = dt.datetime.now(dt.UTC)
    events = [
        {"event_id": f"v{i}", "customer_id": "C1", "item_id": "shoe", "type": "view",
         "occurred_at": (now - dt.timedelta(hours=i)).isoformat()}
        for i in range(3)
    ] + [{"event_id": "p", "customer_id": "C2", "item_id": "hat", "type": "purchase", "value": 1}]  # fmt: skip
    assert api.post("/v1/events", {"events": events}, format="json").json()["accepted"] == 4

    result = fold_item_counters.delay().get(timeout=30)

    assert result["items"] == 2
    folded = selectors.item_online_features()
    assert folded is not None
    rows = folded.rows(np.array([shoe.pk, hat.pk]))
    assert folded.views_24h[rows].tolist() == [3, 0]
    assert folded.purchases_7d[rows].tolist() == [0, 1]
    assert folded.trend[rows[1]] > 1.0


@pytest.mark.django_db(transaction=True)
def test_rebuild_online_state_task_restores_history(api: APIClient, celery_worker: object) -> None:
    item = ItemFactory(external_id="shoe")
    api.post("/v1/events", {"event_id": "e", "customer_id": "C1", "item_id": "shoe", "type": "click"}, format="json")
    redis_client.get().flushdb()
    assert selectors.recent_history("C1") == []

    result = rebuild_online_state.delay().get(timeout=60)

    assert result["owners"] == 1
    assert [(entry.item_pk, entry.type) for entry in selectors.recent_history("C1")] == [(item.pk, 2)]
