"""Impression logging: buffered in process and pushed in bulk off the request path, then drained into Postgres by
flush_impressions on a real worker."""

from __future__ import annotations

import json
import time

import pytest
import redis
from django.contrib.auth.models import AbstractUser
from django.test import override_settings
from django.utils import timezone

from catalog import erasure
from catalog.models import Customer
from experiments import keys, services
from experiments.config import VariantConfig
from experiments.metrics import IMPRESSION_LOG_ERRORS
from experiments.models import Experiment, Impression
from experiments.tasks import flush_impressions
from experiments.units import customer_unit
from experiments.validation import VariantSpec
from kernel import redis_client
from recsys.beat import BEAT_SCHEDULE
from recsys.celery import app
from tests.factories import CustomerFactory, ItemFactory


@pytest.fixture(autouse=True)
def _fresh_snapshot() -> None:
    services.assignment_cache_clear()


def _running(user: AbstractUser, key: str = "imp") -> Experiment:
    experiment = services.experiment_create(
        key=key,
        name=key,
        surface="home",
        variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5, False, {"ranker": False})],
    )
    services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)
    return experiment


@pytest.mark.django_db(transaction=True)
def test_logged_impressions_reach_postgres_through_the_worker(
    celery_worker: object, django_user_model: type[AbstractUser]
) -> None:
    experiment = _running(django_user_model.objects.create_user("m"))
    known = CustomerFactory(external_id="known")
    items = [ItemFactory().pk for _ in range(3)]
    served = {}
    for unit, customer_id, session_id in [
        ("known", "known", ""),
        ("new-customer", "new-customer", "s9"),
        ("s:anon", "", "anon"),
    ]:
        assignment = services.assign(surface="home", unit_id=unit)
        served[unit] = assignment.variant
        services.impression_log(
            request_id=f"req-{unit}", surface="home", customer_id=customer_id, session_id=session_id,
            assignment=assignment, item_pks=items, model_version=3,
        )  # fmt: skip
    services.impression_log(
        request_id="req-none", surface="cart", customer_id="known", session_id="",
        assignment=services.Assignment(None, None, VariantConfig()), item_pks=items[:1], model_version=None,
    )  # fmt: skip
    services.impressions_push()  # what the background loop does within 50 ms
    assert redis_client.get().llen(keys.IMPRESSIONS) == 4

    result = flush_impressions.delay().get(timeout=30)

    assert result == {"records": 4, "rows_stored": 4, "invalid": 0, "skipped": False}
    assert redis_client.get().llen(keys.IMPRESSIONS) == 0
    assert redis_client.get().llen(keys.IMPRESSIONS_PROCESSING) == 0
    rows = {row.request_id: row for row in Impression.objects.select_related("customer", "variant")}
    assert set(rows) == {"req-known", "req-new-customer", "req-s:anon", "req-none"}
    assert rows["req-known"].customer == known
    assert rows["req-known"].item_pks == items
    assert rows["req-known"].model_version == 3
    assert rows["req-known"].experiment_id == experiment.pk
    assert rows["req-known"].variant.name == served["known"]
    # A customer first seen by serving is not created (a read never creates data): the impression is kept without
    # one, but with the pseudonymous unit of the id the assignment hashed (experiments.units), never the id itself.
    assert rows["req-new-customer"].customer is None
    assert rows["req-new-customer"].session_id == "s9"
    assert rows["req-new-customer"].customer_unit == customer_unit("new-customer")
    assert "new-customer" not in json.dumps(
        Impression.objects.filter(request_id="req-new-customer").values().get(), default=str
    ).replace("req-new-customer", "")
    assert not Customer.objects.filter(external_id="new-customer").exists()
    assert rows["req-known"].customer_unit == customer_unit("known")
    # A session's list (and a request's) is its own unit, stored as it is.
    assert rows["req-s:anon"].customer is None
    assert rows["req-s:anon"].session_id == "anon"
    assert rows["req-s:anon"].customer_unit is None
    assert rows["req-none"].experiment_id is None
    assert rows["req-none"].surface == "cart"


@pytest.mark.django_db(transaction=True)
def test_a_replayed_batch_is_stored_once(celery_worker: object, django_user_model: type[AbstractUser]) -> None:
    """At least once: a worker that died after inserting but before trimming leaves its batch in the processing
    list; the next flush stores it again, which ON CONFLICT DO NOTHING turns into a no-op."""
    _running(django_user_model.objects.create_user("m"))
    item = ItemFactory().pk
    assignment = services.assign(surface="home", unit_id="c1")
    services.impression_log(
        request_id="r1", surface="home", customer_id="c1", session_id="", assignment=assignment,
        item_pks=[item], model_version=None,
    )  # fmt: skip
    services.impressions_push()
    record = redis_client.get().lindex(keys.IMPRESSIONS, 0)
    flush_impressions.delay().get(timeout=30)
    redis_client.get().rpush(keys.IMPRESSIONS_PROCESSING, record)  # the "crashed" batch
    redis_client.get().rpush(keys.IMPRESSIONS, b"not json")

    result = flush_impressions.delay().get(timeout=30)

    assert result == {"records": 2, "rows_stored": 0, "invalid": 1, "skipped": False}
    assert Impression.objects.filter(request_id="r1").count() == 1


@pytest.mark.django_db
def test_the_unit_is_keyed_and_an_erased_id_keeps_none(django_user_model: type[AbstractUser]) -> None:
    """The unit is an HMAC under EXPERIMENT_UNIT_HASH_KEY: one id, one unit, and another key another unit. An erased
    id is linked to nothing any more: its lists are stored with neither customer nor unit (catalog.erasure)."""
    _running(django_user_model.objects.create_user("m"))
    item = ItemFactory().pk
    unit = customer_unit("someone")
    assert unit == customer_unit("someone") != customer_unit("someone-else")
    with override_settings(EXPERIMENT_UNIT_HASH_KEY="another-secret"):
        assert customer_unit("someone") != unit
    erasure.tombstone_add(customer_id="gone", erased_at=timezone.now())
    for customer_id in ("gone", "never-known"):
        services.impression_log(
            request_id=f"list-{customer_id}", surface="home", customer_id=customer_id, session_id="",
            assignment=services.assign(surface="home", unit_id=customer_id), item_pks=[item], model_version=None,
        )  # fmt: skip

    services.impressions_flush()

    assert dict(Impression.objects.values_list("request_id", "customer_unit")) == {
        "list-gone": None, "list-never-known": customer_unit("never-known"),
    }  # fmt: skip
    assert not Customer.objects.exists()


@pytest.mark.django_db
def test_forced_assignments_stay_out_of_the_experiment(django_user_model: type[AbstractUser]) -> None:
    _running(django_user_model.objects.create_user("m"))
    item = ItemFactory().pk
    forced = services.assign(surface="home", unit_id="qa", forced_variant="b")
    services.impression_log(
        request_id="qa-1", surface="home", customer_id="qa", session_id="", assignment=forced,
        item_pks=[item], model_version=None,
    )  # fmt: skip

    services.impressions_flush()

    row = Impression.objects.get(request_id="qa-1")
    assert row.experiment_id is None
    assert row.variant_id is None


@pytest.mark.django_db
def test_logging_costs_no_round_trip_and_waits_out_a_redis_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    class DownRedis:
        def pipeline(self, transaction: bool = True) -> object:
            raise redis.ConnectionError("down")

    def log(request_id: str) -> None:
        services.impression_log(
            request_id=request_id, surface="home", customer_id="c", session_id="",
            assignment=services.Assignment(None, None, VariantConfig()), item_pks=[1], model_version=None,
        )  # fmt: skip

    real_get = services.redis_client.get
    monkeypatch.setattr(services.redis_client, "get", lambda: DownRedis())
    monkeypatch.setattr(services._ImpressionBuffer, "MAX_BUFFERED", 3)
    before = IMPRESSION_LOG_ERRORS.labels(reason="redis")._value.get()
    for n in range(5):
        log(f"r{n}")  # never raises, never touches Redis
    services.impressions_push()  # fails: the records wait, the two oldest beyond the bound are dropped and counted
    assert IMPRESSION_LOG_ERRORS.labels(reason="redis")._value.get() == before + 2

    monkeypatch.setattr(services.redis_client, "get", real_get)  # Redis is back
    services.impressions_push()
    queued = [json.loads(raw)["r"] for raw in real_get().lrange(keys.IMPRESSIONS, 0, -1)]
    assert queued == ["r2", "r3", "r4"]


def test_the_background_loop_pushes_without_being_asked() -> None:
    services.impression_log(
        request_id="bg", surface="home", customer_id="c", session_id="",
        assignment=services.Assignment(None, None, VariantConfig()), item_pks=[1], model_version=None,
    )  # fmt: skip
    deadline = time.monotonic() + 5
    while not redis_client.get().llen(keys.IMPRESSIONS) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(redis_client.get().lindex(keys.IMPRESSIONS, 0))["r"] == "bg"


def test_the_queued_record_is_compact_json() -> None:
    services.impression_log(
        request_id="r", surface="home", customer_id="c", session_id="s",
        assignment=services.Assignment("exp", "b", VariantConfig()), item_pks=[5, 6], model_version=2,
        latency_ms=12.34567,
    )  # fmt: skip

    services.impressions_push()
    record = json.loads(redis_client.get().lindex(keys.IMPRESSIONS, 0))
    assert {k: v for k, v in record.items() if k != "t"} == {
        "r": "r", "s": "home", "c": "c", "ss": "s", "x": [["exp", "b"]], "m": 2, "i": [5, 6], "l": 12.346
    }  # fmt: skip


def test_beat_runs_registered_experiment_tasks() -> None:
    ours = {entry["task"] for entry in BEAT_SCHEDULE.values() if entry["task"].startswith("experiments.")}

    assert ours == {"experiments.tasks.flush_impressions", "experiments.tasks.bandit_reweight_running"}
    assert ours <= set(app.tasks)


@pytest.mark.django_db
def test_the_background_loop_pauses_after_a_failed_push(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []

    class DownRedis:
        def pipeline(self, transaction: bool = True) -> object:
            attempts.append(1)
            raise redis.ConnectionError("down")

    monkeypatch.setattr(services.redis_client, "get", lambda: DownRedis())
    services.impression_log(
        request_id="p", surface="home", customer_id="c", session_id="",
        assignment=services.Assignment(None, None, VariantConfig()), item_pks=[1], model_version=None,
    )  # fmt: skip
    services._buffer._push_when_due()
    services._buffer._push_when_due()  # within the pause: Redis is not asked again every 50 ms
    assert len(attempts) == 1
    services.impressions_push()  # an explicit push (a flush, an erasure) does not wait
    assert len(attempts) == 2
