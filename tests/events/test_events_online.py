"""The online state an accepted event leaves in Redis (history, counters, affinities, cache versions), read back
through events.selectors; retries that must not count twice; and the rebuild from Postgres after Redis loses it."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import signal
import threading
import time
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from catalog.models import Item
from events import features, keys, online, selectors, services
from events.models import Interaction
from kernel import redis_client
from tests.factories import CategoryFactory, ItemFactory

pytestmark = pytest.mark.django_db

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
VIEW, CLICK, ADD_TO_CART, PURCHASE, RATING, _DISMISS = (t.value for t in Interaction.Type)


def at(minutes_ago: float) -> str:
    return (NOW - dt.timedelta(minutes=minutes_ago)).isoformat()


def ts(minutes_ago: float) -> float:
    return (NOW - dt.timedelta(minutes=minutes_ago)).timestamp()


def send(client: APIClient, *events: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 202
    return response.json()


@pytest.fixture
def catalog() -> dict[str, Item]:
    """I1, I2 in category "shoes"; I3 in "hats"; I4 without a category."""
    shoes, hats = CategoryFactory(external_id="shoes"), CategoryFactory(external_id="hats")
    return {
        "I1": ItemFactory(external_id="I1", category=shoes),
        "I2": ItemFactory(external_id="I2", category=shoes),
        "I3": ItemFactory(external_id="I3", category=hats),
        "I4": ItemFactory(external_id="I4", category=None),
    }


def ev(event_id: str, item: str, type_: str = "view", minutes_ago: float = 10, **fields: Any) -> dict[str, Any]:
    body = {"event_id": event_id, "customer_id": "C1", "item_id": item, "type": type_, "occurred_at": at(minutes_ago)}
    body.update(fields)
    return {name: value for name, value in body.items() if value is not ...}


# --- History --------------------------------------------------------------------------------------------------


def test_history_is_newest_first_with_item_pk_type_and_time(api: APIClient, catalog: dict[str, Item]) -> None:
    send(api, ev("a", "I1", minutes_ago=30), ev("b", "I2", "click", minutes_ago=20), ev("c", "I3", "purchase", 10))
    history = selectors.recent_history("C1")
    assert history == [
        selectors.HistoryEntry(catalog["I3"].pk, PURCHASE, ts(10)),
        selectors.HistoryEntry(catalog["I2"].pk, CLICK, ts(20)),
        selectors.HistoryEntry(catalog["I1"].pk, VIEW, ts(30)),
    ]
    assert selectors.recent_history("C1", limit=2) == history[:2]


def test_the_owner_state_read_in_one_round_trip_holds_the_same_history(
    api: APIClient, catalog: dict[str, Item]
) -> None:
    send(api, ev("a", "I1", minutes_ago=30), ev("b", "I2", "click", minutes_ago=20), ev("c", "I3", "purchase", 10))
    pipe = redis_client.get().pipeline(transaction=False)
    selectors.owner_state_queue(pipe, "C1", history_limit=50)
    state = selectors.owner_state_parse(pipe.execute())
    rows = selectors.recent_history("C1")
    assert state.history.item_pk.tolist() == [row.item_pk for row in rows]
    assert state.history.type.tolist() == [row.type for row in rows]
    assert state.history.ts.tolist() == [row.ts for row in rows]
    assert state.history.item_pk.dtype == np.int64
    assert state.complete
    assert state.had_pks.tolist() == [catalog["I3"].pk]
    assert state.had_types.tolist() == [PURCHASE]
    empty_state = selectors.owner_state_parse([[], [], 1, [], None, []])
    empty = empty_state.history
    assert (empty.item_pk.size, empty.type.size, empty.ts.size) == (0, 0, 0)
    assert (empty_state.had_pks.size, empty_state.had_types.size) == (0, 0)


def test_late_event_lands_in_time_order(api: APIClient, catalog: dict[str, Item]) -> None:
    send(api, ev("new", "I1", minutes_ago=1))
    send(api, ev("old", "I2", minutes_ago=60))
    assert [entry.item_pk for entry in selectors.recent_history("C1")] == [catalog["I1"].pk, catalog["I2"].pk]


def test_events_of_the_same_moment_read_back_in_the_order_postgres_gives(
    api: APIClient, catalog: dict[str, Item]
) -> None:
    # One batch at one timestamp: Redis holds the events under the same score and returns them in the members' text
    # order, which for item pks like 99999 and 100000 is not the order they were sent in. Both paths say: the later
    # first.
    low, high = ItemFactory(pk=99_999, external_id="P5"), ItemFactory(pk=100_000, external_id="P6")
    same = 5
    send(api, ev("x", "P6", minutes_ago=same), ev("y", "P5", minutes_ago=same), ev("z", "I1", minutes_ago=same))
    expected = [catalog["I1"].pk, low.pk, high.pk]
    assert [entry.item_pk for entry in selectors.recent_history("C1")] == expected
    assert [entry.item_pk for entry in selectors.recent_history_from_db("C1")] == expected
    rows = [(b"9:1:101", 100.0), (b"10:1:102", 100.0), (b"7:1:100", 50.0)]  # as ZREVRANGE gives them
    assert online.parse_history_columns(rows)[0].tolist() == [10, 9, 7]


def test_history_is_bounded_to_the_latest_entries(api: APIClient, catalog: dict[str, Item]) -> None:
    total = online.HISTORY_LENGTH + 15
    send(api, *(ev(f"e{i}", "I1", minutes_ago=total - i) for i in range(total)))
    assert redis_client.get().zcard(keys.history("C1")) == online.HISTORY_LENGTH
    history = selectors.recent_history("C1", limit=1000)
    assert len(history) == online.HISTORY_LENGTH
    assert history[0].ts == ts(1)
    assert history[-1].ts == ts(total - 15)
    assert len(selectors.recent_history("C1")) == 50


def test_anonymous_events_go_to_the_session_owner(api: APIClient, catalog: dict[str, Item]) -> None:
    send(api, ev("a", "I1", customer_id=..., session_id="S7"), ev("b", "I2", session_id="S7"))
    assert [entry.item_pk for entry in selectors.recent_history("s:S7")] == [catalog["I1"].pk]
    # An event naming both belongs to the customer.
    assert [entry.item_pk for entry in selectors.recent_history("C1")] == [catalog["I2"].pk]
    assert 0 < redis_client.get().ttl(keys.history("s:S7")) <= online.SESSION_TTL_SECONDS
    # Every per-owner key bounds itself (Redis does not evict the state): customers' after half a year idle.
    assert online.SESSION_TTL_SECONDS < redis_client.get().ttl(keys.history("C1")) <= online.CUSTOMER_TTL_SECONDS


# --- Counters, affinities, cache versions -------------------------------------------------------------------


def test_hourly_counters_per_item_and_type(api: APIClient, catalog: dict[str, Item]) -> None:
    now = dt.datetime.now(dt.UTC)
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    earlier = (this_hour - dt.timedelta(hours=2) + dt.timedelta(minutes=5)).isoformat()
    current = this_hour.isoformat()
    send(
        api,
        ev("v1", "I1", occurred_at=current), ev("v2", "I1", occurred_at=current), ev("v3", "I1", occurred_at=earlier),
        ev("c1", "I1", "click", occurred_at=current), ev("a1", "I2", "add_to_cart", occurred_at=earlier),
        ev("p1", "I2", "purchase", occurred_at=current), ev("r1", "I2", "rating", value=4, occurred_at=current),
    )  # fmt: skip
    pks = [catalog["I1"].pk, catalog["I2"].pk, catalog["I3"].pk]
    counters = selectors.item_counters(pks, hours=3, now=now.timestamp())
    assert counters.current_hour == int(now.timestamp() // 3600)
    assert counters.views.tolist() == [[1, 0, 2], [0, 0, 0], [0, 0, 0]]
    assert counters.clicks.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert counters.add_to_carts.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert counters.purchases.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
    ttl = redis_client.get().ttl(keys.item_counter("view", counters.current_hour))
    assert online.COUNTER_RETENTION_SECONDS < ttl <= online.COUNTER_RETENTION_SECONDS + 3600


def test_events_older_than_the_counter_retention_are_not_counted(api: APIClient, catalog: dict[str, Item]) -> None:
    send(api, ev("old", "I1", minutes_ago=9 * 24 * 60))
    assert not list(redis_client.get().scan_iter(match=keys.COUNTER_PREFIX + "*"))
    assert len(selectors.recent_history("C1")) == 1


def test_category_affinity_weights_event_types(api: APIClient, catalog: dict[str, Item]) -> None:
    shoes, hats = catalog["I1"].category_id, catalog["I3"].category_id
    send(
        api,
        ev("v", "I1", minutes_ago=60), ev("c", "I2", "click", minutes_ago=50),
        ev("a", "I3", "add_to_cart", minutes_ago=40), ev("p", "I3", "purchase", minutes_ago=30),
        ev("r", "I1", "rating", value=3, minutes_ago=20), ev("x", "I4", "purchase", minutes_ago=10),
    )  # fmt: skip
    read_at = time.time()
    affinity = selectors.category_affinity("C1")

    def decayed(weight: float, minutes_ago: float) -> float:
        return weight * 2 ** (-(read_at - ts(minutes_ago)) / features.AFFINITY_HALF_LIFE_SECONDS)

    expected = {
        shoes: decayed(1, 60) + decayed(2, 50) + decayed(3, 20),  # a rating weighs its value
        hats: decayed(4, 40) + decayed(8, 30),
    }
    assert set(affinity) == {shoes, hats}  # I4 has no category
    for category, weight in expected.items():
        assert affinity[category] == pytest.approx(weight, rel=1e-6)


def test_affinity_decays_with_a_30_day_half_life(api: APIClient, catalog: dict[str, Item]) -> None:
    now = dt.datetime.now(dt.UTC)
    month_ago = (now - dt.timedelta(seconds=features.AFFINITY_HALF_LIFE_SECONDS)).isoformat()
    send(
        api,
        ev("old", "I1", "purchase", occurred_at=month_ago),
        ev("new", "I3", "purchase", occurred_at=now.isoformat()),
    )
    affinity = selectors.category_affinity("C1")
    assert affinity[catalog["I1"].category_id] == pytest.approx(4.0, rel=1e-4)
    assert affinity[catalog["I3"].category_id] == pytest.approx(8.0, rel=1e-4)


def test_cache_version_is_bumped_once_per_request_with_new_events(api: APIClient, catalog: dict[str, Item]) -> None:
    assert selectors.cache_version("C1") == 0
    send(api, ev("a", "I1"), ev("b", "I2"))
    assert selectors.cache_version("C1") == 1
    send(api, ev("c", "I1"))
    assert selectors.cache_version("C1") == 2
    send(api, ev("c", "I1"))  # a retry changes nothing
    assert selectors.cache_version("C1") == 2
    assert selectors.cache_version("C2") == 0


def online_snapshot(owners: list[str], item_pks: list[int]) -> dict[str, Any]:
    """Everything a reader can see, with affinities in stored units so the clock does not move them."""
    return {
        "history": {owner: selectors.recent_history(owner, limit=online.HISTORY_LENGTH) for owner in owners},
        "affinity": {owner: online.read_raw_affinity(owner) for owner in owners},
        "counters": online.read_item_counters(item_pks, hours=8 * 24, now=dt.datetime.now(dt.UTC).timestamp()),
        "had": {owner: dict(redis_client.get().zrange(keys.had(owner), 0, -1, withscores=True)) for owner in owners},
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["history"] == before["history"]
    assert after["affinity"].keys() == before["affinity"].keys()
    for owner, scores in before["affinity"].items():
        assert after["affinity"][owner].keys() == scores.keys()
        for category, score in scores.items():
            # Summed in a different order (per request vs in SQL): equal to rounding.
            assert after["affinity"][owner][category] == pytest.approx(score, rel=1e-9)
    assert np.array_equal(after["counters"], before["counters"])
    assert after["had"].keys() == before["had"].keys()
    for owner, members in before["had"].items():
        assert after["had"][owner].keys() == members.keys(), owner
        assert list(after["had"][owner].values()) == pytest.approx(list(members.values()), abs=1e-6)


def test_duplicates_do_not_double_count_online_state(api: APIClient, catalog: dict[str, Item]) -> None:
    batch = [ev("a", "I1"), ev("b", "I3", "purchase", minutes_ago=5), ev("c", "I2", session_id="S1", customer_id=...)]
    send(api, *batch)
    owners, pks = ["C1", "s:S1"], [item.pk for item in catalog.values()]
    before = online_snapshot(owners, pks)
    versions = [selectors.cache_version(owner) for owner in owners]
    assert send(api, *batch) == {"accepted": 0, "duplicates": 3, "rejected": []}
    assert_same_state(before, online_snapshot(owners, pks))
    assert [selectors.cache_version(owner) for owner in owners] == versions


# --- Rebuild --------------------------------------------------------------------------------------------------


def random_events(rng: random.Random, n: int) -> list[dict[str, Any]]:
    types = ["view"] * 6 + ["click"] * 3 + ["add_to_cart", "purchase", "rating"]
    events = []
    for i in range(n):
        type_ = rng.choice(types)
        owner = rng.choice([{"customer_id": f"C{k}"} for k in range(4)] + [{"session_id": f"S{k}"} for k in range(3)])
        events.append(
            {
                "event_id": f"r{i}",
                "item_id": rng.choice(["I1", "I2", "I3", "I4"]),
                "type": type_,
                "value": rng.randint(1, 5) if type_ == "rating" else None,
                # Distinct times: ties at the history bound would be broken differently, not wrongly.
                "occurred_at": at(i * 5 + rng.random()),
                **owner,
            }
        )
    return events


def test_rebuild_after_redis_loss_restores_the_same_state(api: APIClient, catalog: dict[str, Item]) -> None:
    rng = random.Random(20240607)
    events = random_events(rng, 1600)  # ~5.5 days; each owner gets more than HISTORY_LENGTH events
    for start in range(0, len(events), 400):
        send(api, *events[start : start + 400])
    assert api.post("/v1/sessions/S0/merge", {"customer_id": "C0"}, format="json").status_code == 200
    owners = [f"C{k}" for k in range(4)] + [f"s:S{k}" for k in range(3)]
    pks = [item.pk for item in catalog.values()]
    before = online_snapshot(owners, pks)
    assert all(len(before["history"][owner]) == online.HISTORY_LENGTH for owner in owners if owner != "s:S0")
    assert before["history"]["s:S0"] == []

    # Bought and rated items outlive the history: each customer had more than HISTORY_LENGTH events, and the had
    # set keeps every item they bought or rated (one member per item and type), the session's moved to C0.
    assert all(before["had"][owner] for owner in owners if owner != "s:S0")
    assert before["had"]["s:S0"] == {}

    redis_client.get().flushdb()
    summary = services.online_state_rebuild()

    assert_same_state(before, online_snapshot(owners, pks))
    assert summary.had_items == sum(len(members) for members in before["had"].values())
    assert summary.owners == 6  # S0 belongs to C0 now
    assert all(selectors.cache_version(owner) >= 1 for owner in owners if owner != "s:S0")
    assert selectors.item_online_features() is not None


def test_rebuild_is_idempotent_and_clears_only_its_own_keys(api: APIClient, catalog: dict[str, Item]) -> None:
    send(api, ev("a", "I1"), ev("b", "I2", "purchase", minutes_ago=5))
    client = redis_client.get()
    client.zadd(keys.history("ghost"), {"1:1:1": 1.0})  # an owner whose events are gone from Postgres
    client.set("throttle:key:1:1", 5)
    owners, pks = ["C1"], [item.pk for item in catalog.values()]
    before = online_snapshot(owners, pks)
    version = selectors.cache_version("C1")

    services.online_state_rebuild()
    services.online_state_rebuild()

    assert_same_state(before, online_snapshot(owners, pks))
    assert client.exists(keys.history("ghost")) == 0
    assert client.get("throttle:key:1:1") == b"5"
    assert selectors.cache_version("C1") == version + 2  # only ever moved forward


def test_the_had_set_keeps_every_item_bought_or_rated_beyond_the_history(
    api: APIClient, catalog: dict[str, Item]
) -> None:
    # Early: I1 bought twice and rated, I2 rated; then 250 views push all of them out of the 200-entry history.
    send(
        api, ev("p1", "I1", "purchase", 2000), ev("p2", "I1", "purchase", 1990),
        ev("r1", "I1", "rating", 1980, value=4), ev("r2", "I2", "rating", 1970, value=5),
    )  # fmt: skip
    send(api, *(ev(f"v{n}", ("I3", "I4")[n % 2], minutes_ago=1000 - n) for n in range(250)))
    history = online.read_history("C1", limit=online.HISTORY_LENGTH)
    assert len(history) == online.HISTORY_LENGTH
    assert {row.type for row in history} == {VIEW}

    members = dict(redis_client.get().zrange(keys.had("C1"), 0, -1, withscores=True))
    i1, i2 = catalog["I1"].pk, catalog["I2"].pk
    # One member per (item, type), scored with the latest such event (ZADD GT keeps the later purchase).
    assert members == {
        f"{i1}:{PURCHASE}".encode(): ts(1990), f"{i1}:{RATING}".encode(): ts(1980), f"{i2}:{RATING}".encode(): ts(1970),
    }  # fmt: skip
    pks, types = online.read_had("C1")
    assert sorted(zip(pks.tolist(), types.tolist(), strict=True)) == [(i1, PURCHASE), (i1, RATING), (i2, RATING)]
    # The same from Postgres (serving's degraded path), newest first.
    db_pks, db_types = selectors.had_from_db("C1")
    assert list(zip(db_pks.tolist(), db_types.tolist(), strict=True)) == [(i2, RATING), (i1, RATING), (i1, PURCHASE)]
    assert redis_client.get().ttl(keys.had("C1")) > 0  # bounded like the owner's other keys


def test_the_had_set_is_trimmed_to_the_newest_members(
    api: APIClient, catalog: dict[str, Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(online, "HAD_LENGTH", 2)
    send(api, *(ev(f"p{n}", item, "purchase", 100 - n) for n, item in enumerate(["I1", "I2", "I3", "I4"])))
    pks, _ = online.read_had("C1")
    assert sorted(pks.tolist()) == sorted([catalog["I3"].pk, catalog["I4"].pk])
    db_pks, _ = selectors.had_from_db("C1", limit=2)
    assert db_pks.tolist() == [catalog["I4"].pk, catalog["I3"].pk]


def test_a_merge_moves_the_sessions_had_items_and_erasure_deletes_them(
    api: APIClient, catalog: dict[str, Item]
) -> None:
    send(api, ev("s1", "I2", "purchase", 50, session_id="S9", customer_id=...), ev("c1", "I1", "purchase", 40))
    assert api.post("/v1/sessions/S9/merge", {"customer_id": "C1"}, format="json").status_code == 200
    pks, _ = online.read_had("C1")
    assert sorted(pks.tolist()) == sorted([catalog["I1"].pk, catalog["I2"].pk])
    assert redis_client.get().exists(keys.had("s:S9")) == 0

    online.forget_owner("C1", version_ttl_seconds=60)
    assert redis_client.get().exists(keys.had("C1")) == 0


@pytest.mark.parametrize("customer_ttl", [None, 50, 1000])
def test_a_merge_keeps_what_the_session_was_shown_only_as_long_as_either_would_have(customer_ttl: int | None) -> None:
    """The customer's copy of the session's ``shown:`` hash got a fresh 30 minutes at the merge (a reviewer, 6
    December): it now expires with the later of the session's and the customer's own, and a long visit (more
    answers than Lua's unpack takes) merges whole."""
    answers = {f"r{n}": [n, n + 1] for n in range(9000)}
    online.write_shown({"s:S9": answers}, ttl_seconds=100)
    if customer_ttl is not None:
        online.write_shown({"C1": {"own": [7]}}, ttl_seconds=customer_ttl)
    online.merge_owner(source="s:S9", target="C1")
    client = redis_client.get()
    assert client.hlen(keys.shown("C1")) == 9000 + (customer_ttl is not None)
    assert client.hget(keys.shown("C1"), "r8999") == b"8999,9000"
    expected = max(100, customer_ttl or 0)
    assert expected - 5 < client.ttl(keys.shown("C1")) <= expected


def _one_view(catalog: dict[str, Item]) -> None:
    """One stored event, so a rebuild has a history to write."""
    Interaction.objects.create(
        event_id="r-1", session_id="S1", item=catalog["I1"], type=Interaction.Type.VIEW,
        occurred_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip


def test_rebuild_refuses_to_run_twice_at_once(catalog: dict[str, Item]) -> None:
    redis_client.get().set(keys.REBUILD_LOCK, "someone")
    with pytest.raises(services.RebuildInProgress):
        services.online_state_rebuild()


@pytest.mark.django_db(transaction=True)  # the task closes its database connection
def test_a_rebuild_that_died_frees_its_lock_soon_and_a_skipped_task_looks_again(
    catalog: dict[str, Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock was taken for 4 hours and never renewed: a rebuild killed part-way left serving degraded and every
    rebuild refused for that long, and the task skipped it without asking again (found by a sixth tester, 5
    December). Now a running rebuild renews a short lock, and a skipped task looks again once it would have
    expired."""
    from events import tasks

    monkeypatch.setattr(services.online_state, "REBUILD_LOCK_SECONDS", 1)
    monkeypatch.setattr(services.online_state, "REBUILD_LOCK_HEARTBEAT_SECONDS", 0.1)
    _one_view(catalog)
    # A live rebuild keeps its lock past its lifetime: a second one is refused while the first is still reading.
    refused: list[bool] = []

    def second_attempt(stage: str, rows: int) -> None:
        if not refused:
            time.sleep(1.5)
            try:
                services.online_state_rebuild()
            except services.RebuildInProgress:
                refused.append(True)
            else:
                refused.append(False)

    services.online_state_rebuild(on_progress=second_attempt)
    assert refused == [True]
    assert not redis_client.get().exists(keys.REBUILD_LOCK)  # released at the end
    # One that died: its lock is gone within its lifetime, and the next rebuild runs.
    redis_client.get().set(keys.REBUILD_LOCK, "a killed rebuild", px=1000)
    queued: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.rebuild_online_state, "apply_async", lambda **options: queued.append(options))
    assert "skipped" in tasks.rebuild_online_state()
    assert queued == [{"kwargs": {"only_if_incomplete": True}, "countdown": 6}]
    time.sleep(1.1)
    online.mark_incomplete(request_ttl_seconds=60, token=online.rebuild_token())
    assert "owners" in tasks.rebuild_online_state(only_if_incomplete=True)  # the follow-up rebuilds
    assert online.read_complete()
    assert tasks.rebuild_online_state(only_if_incomplete=True) == {"skipped": "the online state is complete"}


@pytest.mark.django_db(transaction=True)  # the task closes its database connection
def test_a_queued_rebuild_that_finds_the_state_completed_meanwhile_leaves_it_alone(
    catalog: dict[str, Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task looked at only_if_incomplete before it took the lock: one that waited behind another rebuild could
    find the lock free just after that one completed the state, and clear it and rebuild it again, serving degraded
    all along (a reviewer, 6 December). The rebuild looks under the lock now."""
    from events import tasks

    _one_view(catalog)
    services.online_state_rebuild()
    client = redis_client.get()
    history, version = selectors.recent_history("s:S1"), online.read_cache_version("s:S1")
    assert history
    # Another rebuild runs: it holds the lock and has marked the state incomplete.
    online.mark_incomplete(request_ttl_seconds=60, token=online.rebuild_token())
    client.set(keys.REBUILD_LOCK, "another rebuild")
    kept_lock = redis_client.kept_lock

    def the_other_one_completes_first(key: str, **options: Any) -> Any:
        # ...and completes the state just as the queued one comes to take the lock.
        online.mark_complete(now=1234.5)
        client.delete(keys.REBUILD_LOCK)
        return kept_lock(key, **options)

    monkeypatch.setattr(redis_client, "kept_lock", the_other_one_completes_first)
    assert tasks.rebuild_online_state(only_if_incomplete=True) == {"skipped": "the online state is complete"}
    assert client.get(keys.ONLINE_STATE_COMPLETE) == b"1234.5"  # never taken away: serving was not degraded
    assert selectors.recent_history("s:S1") == history
    assert online.read_cache_version("s:S1") == version  # nothing rebuilt: the cached lists stay valid
    assert not client.exists(keys.REBUILD_LOCK)
    assert not client.exists(keys.REBUILD_REQUESTED)

    # Still incomplete under the lock: it rebuilds.
    monkeypatch.setattr(redis_client, "kept_lock", kept_lock)
    online.mark_incomplete(request_ttl_seconds=60, token=online.rebuild_token())
    assert "owners" in tasks.rebuild_online_state(only_if_incomplete=True)
    assert online.read_complete()
    assert client.get(keys.ONLINE_STATE_COMPLETE) != b"1234.5"


@pytest.mark.django_db(transaction=True)  # the task closes its database connection
def test_a_rebuild_that_lost_its_lock_leaves_the_state_incomplete_and_asks_again(
    catalog: dict[str, Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat only logged a lost lock, so a rebuild whose Redis restarted empty (lock, marker and its first
    writes gone) while a second rebuild took the free lock marked the state complete although part of it was
    missing (found by a reviewer, 6 December). Now it stops short of the marker, leaves the other's lock alone, and
    the task asks again."""
    from events import tasks

    _one_view(catalog)
    client = redis_client.get()

    def lose_the_lock(stage: str, rows: int) -> None:
        client.set(keys.REBUILD_LOCK, "a second rebuild")  # Redis restarted; another rebuild took the free lock

    with pytest.raises(services.RebuildAborted, match="lock"):
        services.online_state_rebuild(on_progress=lose_the_lock)
    assert not online.read_complete()
    assert client.get(keys.REBUILD_LOCK) == b"a second rebuild"  # not released by the one that lost it
    assert not client.exists(keys.REBUILD_REQUESTED)  # serving may ask for the rebuild again at once

    # A heartbeat that notices stops the rebuild at its next chunk instead of writing over the other one.
    monkeypatch.setattr(services.online_state, "REBUILD_LOCK_HEARTBEAT_SECONDS", 0.05)
    client.delete(keys.REBUILD_LOCK)
    stages: list[str] = []

    def lose_it_and_wait(stage: str, rows: int) -> None:
        stages.append(stage)
        client.set(keys.REBUILD_LOCK, "a second rebuild")
        time.sleep(0.3)

    with pytest.raises(services.RebuildAborted, match="lock"):
        services.online_state_rebuild(on_progress=lose_it_and_wait)
    assert stages == ["history"]

    queued: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.rebuild_online_state, "apply_async", lambda **options: queued.append(options))
    monkeypatch.setattr(services.online_state, "item_features_fold", lambda: lose_the_lock("", 0) or _folded())
    client.delete(keys.REBUILD_LOCK)
    assert "aborted" in tasks.rebuild_online_state()
    assert queued == [{"kwargs": {"only_if_incomplete": True}, "countdown": 5}]
    assert not online.read_complete()


@pytest.mark.django_db(transaction=True)  # the second rebuild runs on a thread of its own: it sees committed rows only
def test_a_rebuild_that_lost_its_lock_leaves_the_request_to_the_one_that_took_it(
    catalog: dict[str, Item], sent_tasks: list[tuple[str, dict[str, Any]]]
) -> None:
    """A rebuild that lost its lock released the request for a rebuild on its way out, though by then it was the
    request of the rebuild that had taken the lock: serving, finding the state incomplete, asked for a third rebuild
    while the second ran (a reviewer, 6 December). The request holds its rebuild's token now; only that one renews or
    releases it. A real second rebuild takes the lock the first lost, and is paused part-way."""
    from django.db import connection

    _one_view(catalog)
    client = redis_client.get()
    paused, resume = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def pause(stage: str, rows: int) -> None:
        paused.set()
        resume.wait(30)

    def second_rebuild() -> None:
        try:
            services.online_state_rebuild(on_progress=pause)
        except BaseException as exc:
            failed.append(exc)
        finally:
            connection.close()

    second = threading.Thread(target=second_rebuild)

    def lose_the_lock(stage: str, rows: int) -> None:
        if not paused.is_set():
            client.delete(keys.REBUILD_LOCK)  # it expired through a Redis outage...
            second.start()  # ...and a second rebuild took it: it marked the state incomplete and is writing
            assert paused.wait(10)

    try:
        with pytest.raises(services.RebuildAborted, match="lock"):
            services.online_state_rebuild(on_progress=lose_the_lock)
        theirs = client.get(keys.REBUILD_REQUESTED)
        assert theirs is not None
        assert theirs.startswith(b"rebuild:")  # still the second one's
        assert services.online_state_rebuild_request() is False  # serving does not ask for a third
        assert sent_tasks == []
        # Nor does a late beat or release of another rebuild (the one that lost the lock) touch it.
        assert online.hold_rebuild_request(ttl_seconds=600, token=online.rebuild_token()) is False
        assert online.release_rebuild_request(token=online.rebuild_token()) is False
        assert client.get(keys.REBUILD_REQUESTED) == theirs
        assert 0 < client.ttl(keys.REBUILD_REQUESTED) <= services.online_state.REBUILD_RUNNING_REQUEST_SECONDS
    finally:
        resume.set()
        second.join(10)
    assert failed == []
    assert online.read_complete()  # the second one finished the job
    assert not client.exists(keys.REBUILD_REQUESTED)


def _folded() -> Any:
    return services.FoldSummary(items=0, version=0, seconds=0.0)


def test_the_heartbeat_notices_a_lock_that_is_no_longer_ours() -> None:
    client = redis_client.get()
    with redis_client.kept_lock("lock:{test}:kept", seconds=5, heartbeat=0.05) as held:
        assert held
        assert not held.lost
        assert held.confirm()
        client.set("lock:{test}:kept", "someone else")
        deadline = time.monotonic() + 5
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.lost
        assert not held.confirm()
    assert client.get("lock:{test}:kept") == b"someone else"
    client.delete("lock:{test}:kept")


@pytest.mark.django_db
def test_a_cluster_master_emptied_during_a_rebuild_leaves_the_state_incomplete(catalog: dict[str, Item]) -> None:
    """The sentinels were written once the rebuild ended, so a master that restarted empty while it ran got a fresh
    sentinel and the marker vouched for writes it had lost (found by a reviewer, 6 December). They are written
    before the first write now, and checked before the marker."""
    if not redis_client.is_cluster():
        pytest.skip("the sentinels exist on a Redis Cluster only (make test runs this file on one)")
    _one_view(catalog)
    names: list[str] = []

    def empty_a_master(stage: str, rows: int) -> None:
        if not names:
            names.extend(json.loads(redis_client.get().get(keys.NODE_SENTINELS)))
            redis_client.get().delete(names[1])  # as a master restarted without its data loses it

    with pytest.raises(services.RebuildAborted, match="lost their data"):
        services.online_state_rebuild(on_progress=empty_a_master)
    assert not online.read_complete()
    services.online_state_rebuild()  # run again: complete, every sentinel there
    assert online.read_complete()
    assert online.node_sentinels_lost() == []


def test_a_rebuild_is_asked_for_only_while_the_state_is_incomplete_and_none_runs() -> None:
    client = redis_client.get()
    ttl = services.REBUILD_REQUEST_SECONDS
    # Complete (e.g. a request read it incomplete just before a rebuild finished): nothing to ask for.
    online.mark_complete(now=time.time())
    assert online.claim_rebuild_request(ttl_seconds=ttl) is False
    assert client.exists(keys.REBUILD_REQUESTED) == 0
    # A rebuild running, whoever started it (the command, a task): it is the requested one.
    online.mark_incomplete(request_ttl_seconds=ttl, token=online.rebuild_token())
    assert online.claim_rebuild_request(ttl_seconds=ttl) is False
    # Lost and nobody rebuilding (an empty Redis): the first caller claims it, once.
    client.delete(keys.REBUILD_REQUESTED)
    assert online.claim_rebuild_request(ttl_seconds=ttl) is True
    assert online.claim_rebuild_request(ttl_seconds=ttl) is False
    # The rebuild ends: complete again, and no request left behind.
    online.mark_complete(now=time.time())
    assert client.exists(keys.REBUILD_REQUESTED) == 0
    assert online.claim_rebuild_request(ttl_seconds=ttl) is False


def test_a_finished_rebuild_leaves_nothing_to_ask_for(api: APIClient, catalog: dict[str, Item]) -> None:
    send(api, ev("a", "I1"))
    redis_client.get().flushdb()
    services.online_state_rebuild()
    assert online.read_complete()
    # A request that saw the state incomplete during the rebuild asks only now: no second rebuild is queued.
    assert services.online_state_rebuild_request() is False
    assert redis_client.get().exists(keys.REBUILD_REQUESTED) == 0


@pytest.fixture
def sent_tasks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """What serving's request for a rebuild sends to the broker, kept here instead."""
    from recsys.celery import app

    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(app, "send_task", lambda name, **options: sent.append((name, options)))
    return sent


@pytest.mark.parametrize(
    "stop", [KeyboardInterrupt(), SystemExit(143), RuntimeError("a bug")], ids=lambda stop: type(stop).__name__
)
def test_a_rebuild_stopped_short_in_any_way_lets_serving_ask_again_at_once(
    catalog: dict[str, Item],
    monkeypatch: pytest.MonkeyPatch,
    sent_tasks: list[tuple[str, dict[str, Any]]],
    stop: BaseException,
) -> None:
    """Only RebuildAborted and RedisError released the request for a rebuild: a Ctrl-C'd command (or a killed task)
    left the marker gone and the request claimed, so every personal list was degraded and no rebuild could be asked
    for, for 15 minutes (a ninth tester, 6 December). Whatever stops it, it releases the request and re-raises."""
    _one_view(catalog)
    write_histories = online.write_histories

    def then_stop(histories: Any) -> None:  # at the first chunk boundary: the state half written
        write_histories(histories)
        raise stop

    monkeypatch.setattr(online, "write_histories", then_stop)
    with pytest.raises(type(stop)):
        services.online_state_rebuild()

    client = redis_client.get()
    assert not online.read_complete()  # the marker stays absent: serving reads Postgres, degraded
    assert not client.exists(keys.REBUILD_REQUESTED)
    assert not client.exists(keys.REBUILD_LOCK)
    # The next request that finds the state incomplete asks for a rebuild at once, and only if still needed when run.
    assert services.online_state_rebuild_request() is True
    assert sent_tasks == [(services.REBUILD_TASK, {"kwargs": {"only_if_incomplete": True}})]


class _Killed(BaseException):
    """Ends the abandoned rebuild's thread once the test is done with it."""


@pytest.mark.django_db(transaction=True)  # the rebuild runs on a thread of its own, which sees committed rows only
def test_a_rebuild_killed_outright_stops_holding_the_request_within_its_short_expiry(
    catalog: dict[str, Item], monkeypatch: pytest.MonkeyPatch, sent_tasks: list[tuple[str, dict[str, Any]]]
) -> None:
    """A SIGKILL runs nothing, so the request the rebuild holds must expire by itself, and soon: it was claimed for 15
    minutes (a ninth tester, 6 December). A real rebuild is paused part-way, then abandoned as a killed process
    is: its heartbeat stops renewing anything."""
    from django.db import connection

    from events import tasks

    monkeypatch.setattr(services.online_state, "REBUILD_RUNNING_REQUEST_SECONDS", 1)
    monkeypatch.setattr(services.online_state, "REBUILD_LOCK_SECONDS", 4)
    monkeypatch.setattr(services.online_state, "REBUILD_LOCK_HEARTBEAT_SECONDS", 0.1)
    _one_view(catalog)
    client = redis_client.get()
    killed, paused, resume = threading.Event(), threading.Event(), threading.Event()
    confirm, hold = redis_client.KeptLock.confirm, online.hold_rebuild_request
    # Once "killed", the abandoned rebuild's heartbeat renews neither its lock nor its request.
    monkeypatch.setattr(redis_client.KeptLock, "confirm", lambda self: killed.is_set() or confirm(self))
    monkeypatch.setattr(online, "hold_rebuild_request", lambda **kw: not killed.is_set() and hold(**kw))

    def pause(stage: str, rows: int) -> None:
        paused.set()
        resume.wait(30)
        raise _Killed

    def rebuild() -> None:
        try:
            services.online_state_rebuild(on_progress=pause)
        except _Killed:
            pass
        finally:
            connection.close()

    abandoned = threading.Thread(target=rebuild)
    abandoned.start()
    try:
        assert paused.wait(10)
        # Alive: its heartbeat keeps the request past its one-second life, and serving does not ask for another.
        time.sleep(1.5)
        assert 0 < client.pttl(keys.REBUILD_REQUESTED) <= 1000
        assert services.online_state_rebuild_request() is False

        killed.set()
        deadline = time.monotonic() + 1.5  # the short expiry, and a little
        while client.exists(keys.REBUILD_REQUESTED):
            assert time.monotonic() < deadline, "the killed rebuild still holds the request"
            time.sleep(0.05)
        assert not online.read_complete()
        assert services.online_state_rebuild_request() is True  # serving asks again
        assert sent_tasks == [(services.REBUILD_TASK, {"kwargs": {"only_if_incomplete": True}})]

        # The task it queued finds the dead rebuild's lock (still up to 4 s to live) and looks again when it expires,
        # not a whole lock's life later.
        queued: list[dict[str, Any]] = []
        monkeypatch.setattr(tasks.rebuild_online_state, "apply_async", lambda **options: queued.append(options))
        ttl = client.pttl(keys.REBUILD_LOCK) / 1000
        assert "skipped" in tasks.rebuild_online_state(only_if_incomplete=True)
        assert 0 < ttl < 3.5  # about a second of its four went by while the request expired
        assert queued[0]["kwargs"] == {"only_if_incomplete": True}
        assert queued[0]["countdown"] in (math.ceil(ttl) + 4, math.ceil(ttl) + 5)  # read a moment later
        deadline = time.monotonic() + 4.5
        while client.exists(keys.REBUILD_LOCK):
            assert time.monotonic() < deadline, "the killed rebuild still holds its lock"
            time.sleep(0.05)
    finally:
        resume.set()
        abandoned.join(10)
    killed.clear()
    assert "owners" in tasks.rebuild_online_state(only_if_incomplete=True)  # the second look rebuilds
    assert online.read_complete()
    assert not client.exists(keys.REBUILD_REQUESTED)


def test_rebuild_command_prints_a_summary(api: APIClient, catalog: dict[str, Item]) -> None:
    send(api, ev("a", "I1"), ev("b", "I3", "click", session_id="S1", customer_id=...))
    redis_client.get().flushdb()
    out = StringIO()
    call_command("rebuild_online_state", "--quiet", stdout=out, stderr=StringIO())
    lines = dict(line.rsplit(None, 1) for line in out.getvalue().splitlines())
    assert lines["owners (customers + sessions)"] == "2"
    assert lines["history entries"] == "2"
    assert [entry.item_pk for entry in selectors.recent_history("s:S1")] == [catalog["I3"].pk]


@pytest.mark.django_db(transaction=True)  # run_from_argv closes the database connections, as manage.py does
def test_a_ctrl_c_of_the_rebuild_command_says_what_it_left_in_one_line(
    catalog: dict[str, Item], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C printed a raw KeyboardInterrupt traceback and no hint of the state it left (a ninth tester, 6 December).
    manage.py runs the command through run_from_argv, as here: one line, exit status 130."""
    from events.management.commands.rebuild_online_state import Command

    _one_view(catalog)
    write_histories = online.write_histories

    def interrupted(histories: Any) -> None:
        write_histories(histories)
        raise KeyboardInterrupt

    monkeypatch.setattr(online, "write_histories", interrupted)
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "rebuild_online_state", "--quiet"])
    assert exited.value.code == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"CommandError: interrupted while rebuilding: the online state is marked incomplete and partly rebuilt; "
        f"{_DEGRADED}"
    ]
    assert not redis_client.get().exists(keys.REBUILD_REQUESTED)


_DEGRADED = (
    "serving reads histories from Postgres (lists marked degraded) until a rebuild completes, and asks a worker for "
    "one at its next personal request; run rebuild_online_state again to rebuild now"
)


@pytest.mark.parametrize(
    ("where", "then", "line", "complete", "history_left"),
    [
        (
            "mark_incomplete", False,
            "interrupted before the rebuild began: the online state is complete and untouched; nothing to do",
            True, True,
        ),
        (
            "mark_incomplete", True,
            f"interrupted before clearing anything: the online state is marked incomplete; {_DEGRADED}",
            False, True,
        ),
        (
            "clear_rebuildable", True,
            f"interrupted while clearing: the online state is marked incomplete and (partly) cleared; {_DEGRADED}",
            False, False,
        ),
        (
            "write_histories", True,
            f"interrupted while rebuilding: the online state is marked incomplete and partly rebuilt; {_DEGRADED}",
            False, True,
        ),
        (
            "mark_complete", True,
            "interrupted after the rebuild completed: the online state is complete; nothing to do",
            True, True,
        ),
    ],
    ids=["before-the-marker", "marker-written", "keys-cleared", "rebuilding", "completed"],
)  # fmt: skip
def test_an_interrupted_rebuild_command_says_how_far_it_got(
    catalog: dict[str, Item],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    then: bool,
    line: str,
    complete: bool,
    history_left: bool,
) -> None:
    """The line read only the marker: "had not started clearing it" whenever the state was complete, also once the
    rebuild had completed it (a reviewer, 6 December). It follows how far the rebuild got now, each step real:
    Ctrl-C just before ``where`` runs, or just after (``then``)."""
    _one_view(catalog)
    services.online_state_rebuild()  # complete, with a history for S1
    step = getattr(online, where)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if then:
            step(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(online, where, interrupted)
    with pytest.raises(CommandError) as raised:
        call_command("rebuild_online_state", "--quiet", stdout=StringIO(), stderr=StringIO())
    assert str(raised.value) == line
    assert raised.value.returncode == 130
    # What the line says is what the rebuild left.
    assert online.read_complete() is complete
    assert bool(selectors.recent_history("s:S1")) is history_left
    assert not redis_client.get().exists(keys.REBUILD_REQUESTED)


def test_a_sigterm_stops_the_rebuild_command_like_ctrl_c(
    catalog: dict[str, Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (kill, a service manager stopping it) ended the process where it stood, releasing nothing. The command
    turns it into an exit that the rebuild unwinds from, and puts the previous handler back."""
    _one_view(catalog)
    write_histories = online.write_histories
    before = signal.getsignal(signal.SIGTERM)

    def terminated(histories: Any) -> None:
        write_histories(histories)
        # Without the command's handler the signal would end the test run itself.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, before)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(online, "write_histories", terminated)
    with pytest.raises(CommandError, match="^interrupted while rebuilding: the online state is marked") as raised:
        call_command("rebuild_online_state", "--quiet", stdout=StringIO(), stderr=StringIO())
    assert raised.value.returncode == 143
    assert not redis_client.get().exists(keys.REBUILD_REQUESTED)
    assert not online.read_complete()
    assert signal.getsignal(signal.SIGTERM) == before


# --- Item features (fold) -----------------------------------------------------------------------------------


def test_fold_stores_features_that_readers_cache_until_the_version_changes(
    api: APIClient, catalog: dict[str, Item]
) -> None:
    assert selectors.item_online_features() is None
    send(api, ev("v1", "I1"), ev("v2", "I1", minutes_ago=5), ev("p", "I2", "purchase"))
    services.item_features_fold()
    first = selectors.item_online_features()
    assert first is not None
    assert selectors.item_online_features() is first  # served from process memory
    rows = first.rows(np.array([catalog["I1"].pk, catalog["I2"].pk, catalog["I3"].pk]))
    assert rows[2] == -1
    assert first.views_24h[rows[:2]].tolist() == [2, 0]
    assert first.purchases_24h[rows[:2]].tolist() == [0, 1]
    assert first.purchases_7d[rows[:2]].tolist() == [0, 1]
    with pytest.raises(ValueError, match="read-only"):
        first.views_24h[0] = 7

    send(api, ev("v3", "I1", minutes_ago=1))
    assert selectors.item_online_features() is first  # not folded yet
    services.item_features_fold()
    second = selectors.item_online_features()
    assert second is not first
    assert second is not None
    assert second.views_24h[second.rows(np.array([catalog["I1"].pk]))].tolist() == [3]


def test_docs_list_every_redis_key() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    for pattern in keys.KEY_PATTERNS:
        assert f"`{pattern}`" in docs, pattern


def test_readers_degrade_without_redis(
    api: APIClient, catalog: dict[str, Item], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    send(api, ev("a", "I1", "purchase"))
    services.item_features_fold()
    folded = selectors.item_online_features()
    assert folded is not None

    dead = redis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"), socket_timeout=0.1)
    monkeypatch.setattr(redis_client, "get", lambda: dead)

    assert selectors.item_online_features() is folded  # the last copy this process had
    assert selectors.category_affinity("C1") == {}
    assert [entry.item_pk for entry in selectors.recent_history("C1")] == [catalog["I1"].pk]  # from Postgres
    with pytest.raises(redis.RedisError):
        selectors.cache_version("C1")  # unknown: the caller must bypass its cache
