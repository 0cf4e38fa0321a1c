"""Impression logging: buffered per process, pushed to a Redis queue every 50 ms, flushed to Postgres by a task."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis
from django.db import connection, transaction

from catalog import erasure
from catalog import selectors as catalog_selectors
from catalog.signals import customers_created
from experiments import keys
from experiments.metrics import IMPRESSION_LOG_ERRORS, IMPRESSIONS_STORED
from experiments.models import Variant
from experiments.services.assignment import Assignment
from experiments.units import customer_unit
from kernel import redis_client
from kernel.background import Periodic

logger = logging.getLogger(__name__)


# The queue is capped so a long worker outage cannot fill Redis; beyond it the oldest records are dropped (and
# counted as "overflow").
MAX_QUEUED_IMPRESSIONS = 2_000_000
_FLUSH_BATCH_LIMIT = 5_000  # records per Lua call: RPUSH's arguments are unpacked on Lua's C stack (max ~8000)
FLUSH_LOCK_SECONDS = 300  # longer than flush_impressions' hard time limit, so a live flush never loses the lock

_MOVE_BATCH = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
    redis.call('RPUSH', KEYS[2], unpack(items))
    redis.call('LTRIM', KEYS[1], #items, -1)
end
return #items
"""
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def impression_log(
    *,
    request_id: str,
    surface: str,
    customer_id: str,
    session_id: str,
    assignment: Assignment,
    item_pks: Sequence[int],
    model_version: int | None,
    latency_ms: float | None = None,
) -> None:
    """Queue one served list for ``flush_impressions``, without a round trip (see ``_ImpressionBuffer``); never
    raises.

    ``customer_id`` is the customer's external id when the assignment hashed it (the list's unit; the flush keeps it
    pseudonymously as ``customer_unit``, experiments.units), else "" (then ``session_id`` identifies the unit, or
    without one the request id). Forced (QA) assignments are logged without their experiment, so they never enter its
    results. ``latency_ms`` is how long serving took to make the list (the latency guardrail's p95 per variant).
    """
    try:
        memberships = (
            [[assignment.experiment_key, assignment.variant]]
            if assignment.experiment_key and assignment.variant and not assignment.forced
            else []
        )
        record = orjson.dumps(
            {
                "r": request_id,
                "t": round(time.time(), 3),
                "s": surface,
                "c": customer_id or "",
                "ss": session_id or "",
                "x": memberships,
                "m": model_version,
                "i": [int(pk) for pk in item_pks],
                "l": None if latency_ms is None else round(float(latency_ms), 3),
            },
        )
    except (TypeError, ValueError):
        IMPRESSION_LOG_ERRORS.labels(reason="invalid").inc()
        logger.exception("impression_log_invalid", extra={"request_id": request_id})
        return
    _buffer.add(record)


IMPRESSION_PUSH_INTERVAL_SECONDS = 0.05
_PUSH_PAUSE_AFTER_FAILURE_SECONDS = 1.0


class _ImpressionBuffer:
    """This process's impressions on their way to the Redis queue: a request appends its record, and a background
    loop pushes whatever accumulated every ``IMPRESSION_PUSH_INTERVAL_SECONDS`` in one RPUSH, so logging costs the
    request no round trip. While Redis is unreachable records wait here, up to ``MAX_BUFFERED`` (beyond it the
    oldest are dropped and counted as "redis"), and the loop tries again only after a pause, not every interval; a
    worker stopped gracefully pushes what it holds at exit, one that crashes loses at most the last interval's.
    """

    MAX_BUFFERED = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._push_lock = threading.Lock()  # one push at a time; clear() waits for a push in flight
        self._records: list[bytes] = []
        self._paused_until = 0.0
        self._loop = Periodic("impression-push", IMPRESSION_PUSH_INTERVAL_SECONDS, self._push_when_due)

    def add(self, record: bytes) -> None:
        with self._lock:
            self._records.append(record)
        self._loop.ensure()

    def push(self) -> None:
        """Push now, whether or not the loop is pausing after a failure."""
        with self._push_lock:
            self._push()

    def _push_when_due(self) -> None:
        if time.monotonic() >= self._paused_until:
            self.push()

    def _push(self) -> None:
        with self._lock:
            records, self._records = self._records, []
        if not records:
            return
        try:
            pipe = redis_client.get().pipeline(transaction=False)
            for start in range(0, len(records), _FLUSH_BATCH_LIMIT):
                pipe.rpush(keys.IMPRESSIONS, *records[start : start + _FLUSH_BATCH_LIMIT])
            pipe.ltrim(keys.IMPRESSIONS, -MAX_QUEUED_IMPRESSIONS, -1)
            length = max(pipe.execute()[:-1])
        except redis.RedisError:
            self._paused_until = time.monotonic() + _PUSH_PAUSE_AFTER_FAILURE_SECONDS
            logger.warning("impression_push_redis_unavailable", exc_info=True, extra={"records": len(records)})
            with self._lock:
                self._records = records + self._records
                dropped = len(self._records) - self.MAX_BUFFERED
                if dropped > 0:
                    del self._records[:dropped]
            if dropped > 0:
                IMPRESSION_LOG_ERRORS.labels(reason="redis").inc(dropped)
            return
        if length > MAX_QUEUED_IMPRESSIONS:
            IMPRESSION_LOG_ERRORS.labels(reason="overflow").inc(length - MAX_QUEUED_IMPRESSIONS)
        self._paused_until = 0.0

    def clear(self) -> None:
        with self._push_lock, self._lock:
            self._records = []
            self._paused_until = 0.0


_buffer = _ImpressionBuffer()


def impressions_buffer_clear() -> None:
    """Forget this process's unpushed impressions (tests)."""
    _buffer.clear()


def impressions_push() -> None:
    """Push this process's logged impressions to the Redis queue now (the background loop does it within
    ``IMPRESSION_PUSH_INTERVAL_SECONDS`` anyway)."""
    _buffer.push()


@dataclass(frozen=True)
class FlushSummary:
    records: int  # records taken from the queue
    rows_stored: int  # rows newly inserted (replays of a batch store nothing twice)
    invalid: int  # records that could not be parsed and were dropped
    skipped: bool = False  # another flush held the lock


def impressions_flush(*, batch_size: int = 2_000, max_batches: int = 200) -> FlushSummary:
    """Drain the impression queue into Postgres, at least once: a batch moves atomically (Lua) from the queue to the
    processing list (``experiments.keys``) and leaves it only after its rows are committed; the insert is
    ``ON CONFLICT DO NOTHING`` on (request_id, experiment), so storing a batch again is harmless.

    One flusher at a time (a Redis lock); a run stops after ``max_batches`` and the next beat continues.
    """
    if not 1 <= batch_size <= _FLUSH_BATCH_LIMIT:
        raise ValueError(f"batch_size must be between 1 and {_FLUSH_BATCH_LIMIT}, got {batch_size}")
    impressions_push()  # this process's own first (a flush run where lists are served: tests, the demo replay)
    client = redis_client.get()
    token = uuid.uuid4().hex
    if not client.set(keys.FLUSH_LOCK, token, nx=True, ex=FLUSH_LOCK_SECONDS):
        return FlushSummary(0, 0, 0, skipped=True)
    records = stored = invalid = 0
    try:
        move = redis_client.script(_MOVE_BATCH, slot_key=keys.IMPRESSIONS)
        batches = 0
        while batches < max_batches:
            # A batch left by a flush that died first, then new ones.
            raw = cast(list[bytes], client.lrange(keys.IMPRESSIONS_PROCESSING, 0, batch_size - 1))
            if not raw:
                if not move(keys=[keys.IMPRESSIONS, keys.IMPRESSIONS_PROCESSING], args=[batch_size]):
                    break
                continue
            batch_stored, batch_invalid = _impressions_store(raw)
            client.ltrim(keys.IMPRESSIONS_PROCESSING, len(raw), -1)
            records += len(raw)
            stored += batch_stored
            invalid += batch_invalid
            batches += 1
    finally:
        redis_client.script(_RELEASE_LOCK, slot_key=keys.FLUSH_LOCK)(keys=[keys.FLUSH_LOCK], args=[token])
    IMPRESSIONS_STORED.inc(stored)
    if records:
        logger.info("impressions_flushed", extra={"records": records, "stored": stored, "invalid": invalid})
    return FlushSummary(records, stored, invalid)


_INSERT_IMPRESSIONS = """
INSERT INTO experiments_impression
       (request_id, served_at, surface, customer_id, session_id, experiment_id, variant_id, model_version, item_pks,
        latency_ms, customer_unit)
SELECT r, to_timestamp(t), s, c, ss, e, v, m, i::bigint[], l, cu
  FROM unnest(%s::text[], %s::float8[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::bigint[],
              %s::integer[], %s::text[], %s::float8[], %s::uuid[]) AS u(r, t, s, c, ss, e, v, m, i, l, cu)
    ON CONFLICT DO NOTHING
"""


def _impressions_store(raw: Sequence[bytes]) -> tuple[int, int]:
    """Insert one batch of queued records in one transaction; returns (rows inserted, invalid records).

    Records that would fail the insert (over-long ids, wrong types) are dropped here, one by one, so a single bad
    record can never block the queue behind it.
    """
    parsed: list[dict[str, Any]] = []
    invalid = 0
    for item in raw:
        record = _record_parse(item)
        if record is None:
            invalid += 1
        else:
            parsed.append(record)
    if not parsed:
        return 0, invalid
    with transaction.atomic():
        # A served list never creates a customer: a read must not create data, and an id erased meanwhile must not
        # come back. The impression of an unknown (or erased) id is stored without a customer (its session and
        # request id still attribute it); a customer whose first event arrives before the flush is linked.
        # Locked against an erasure: one committing while this transaction ran failed its whole batch at COMMIT.
        named = {r["c"] for r in parsed if r["c"]}
        customers = catalog_selectors.customer_pks(external_ids=named, locked=True)
        # The list's unit, the customer id the assignment hashed, is kept pseudonymously (experiments.units): the
        # lists of a customer without a row yet are one unit of the results, and found by an erasure and an export.
        # Not for an erased id: nothing is linked to it any more (read after the lock above: an erasure that held a
        # customer's row has committed its suppression entry by now).
        erased = erasure.erased_ids(named - customers.keys())
        units = {customer_id: customer_unit(customer_id) for customer_id in named - erased}
        wanted = {(key, name) for r in parsed for key, name in r["x"]}
        variants = {
            (key, name): (experiment_id, variant_id)
            for key, name, experiment_id, variant_id in Variant.objects.filter(
                experiment__key__in={key for key, _ in wanted}
            ).values_list("experiment__key", "name", "experiment_id", "pk")
            if (key, name) in wanted
        }
        columns: list[list[Any]] = [[] for _ in range(11)]
        for r in parsed:
            resolved: list[tuple[int | None, int | None]] = [
                variants[m] for m in map(tuple, r["x"]) if m in variants
            ] or [(None, None)]
            for experiment_id, variant_id in resolved:
                for column, value in zip(
                    columns,
                    (
                        r["r"],
                        r["t"],
                        r["s"],
                        customers.get(r["c"]),
                        r["ss"],
                        experiment_id,
                        variant_id,
                        r["m"],
                        "{" + ",".join(map(str, r["i"])) + "}",
                        r.get("l"),
                        units.get(r["c"]),
                    ),
                    strict=True,
                ):
                    column.append(value)
        with connection.cursor() as cursor:
            cursor.execute(_INSERT_IMPRESSIONS, columns)
            inserted = cursor.rowcount
    return inserted, invalid


def _record_parse(item: bytes) -> dict[str, Any] | None:
    try:
        r = json.loads(item)
        ok = (
            isinstance(r, dict)
            and isinstance(r.get("r"), str)
            and 0 < len(r["r"]) <= 64
            and isinstance(r.get("t"), int | float)
            and math.isfinite(r["t"])
            and isinstance(r.get("s"), str)
            and 0 < len(r["s"]) <= 50
            and isinstance(r.get("c"), str)
            and len(r["c"]) <= 100
            and isinstance(r.get("ss"), str)
            and len(r["ss"]) <= 100
            and isinstance(r.get("x"), list)
            and all(isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m) for m in r["x"])
            and (r.get("m") is None or (isinstance(r["m"], int) and abs(r["m"]) < 2**31))
            and isinstance(r.get("i"), list)
            and all(isinstance(pk, int) and not isinstance(pk, bool) and 0 < pk < 2**63 for pk in r["i"])
            # Records queued before serving recorded latencies have no "l".
            and (
                r.get("l") is None
                or (isinstance(r["l"], int | float) and not isinstance(r["l"], bool) and 0 <= r["l"] < 1e9)
            )
        )
    except ValueError:
        ok = False
    if not ok:
        logger.error("impression_record_invalid", extra={"record": item[:500]})
        return None
    return r


def impressions_link_customers(*, customers: Mapping[str, int]) -> int:
    """Give customers just created (``customers``: {external id: primary key}) the lists served under their id before
    their row existed: stored without a customer but with the id's unit (``experiments.units``), they become the
    customer's own, so a purchase without a request id is attributed to them (the results' rule (b) matches
    purchases by customer) even when no later list of theirs links the unit, and the customer's erasure and export
    reach them with the rest. Returns the number of lists linked.

    Runs on ``catalog.signals.customers_created``, after the creating transaction committed. The lookup is the
    partial index ``impression_customer_unit`` (lists stored without their customer: few); a shop with none left
    pays one index probe per batch of new customers. An erasure racing it (the row gone again) leaves the lists to
    that erasure, which deletes them by their unit.
    """
    if not customers:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        # None left to link (the usual case, and a bulk import's into a new shop): no hashing, no probe per id.
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM experiments_impression"
            " WHERE customer_id IS NULL AND customer_unit IS NOT NULL)"
        )
        if not cursor.fetchone()[0]:
            return 0
        units = [customer_unit(external_id) for external_id in customers]
        cursor.execute(
            """UPDATE experiments_impression i SET customer_id = c.id
                 FROM unnest(%s::uuid[], %s::bigint[]) AS u(unit, pk)
                 JOIN catalog_customer c ON c.id = u.pk
                WHERE i.customer_id IS NULL AND i.customer_unit IS NOT NULL
                  AND i.customer_unit = ANY(%s::uuid[]) AND i.customer_unit = u.unit""",
            [units, list(customers.values()), units],
        )
        linked = cursor.rowcount
    if linked:
        logger.info("impressions_linked_to_new_customers", extra={"customers": len(customers), "lists": linked})
    return linked


def _on_customers_created(sender: object, *, customers: Mapping[str, int], **kwargs: object) -> None:
    impressions_link_customers(customers=customers)


def customers_created_connect() -> None:
    """Link the lists of every customer the catalog creates (``ExperimentsConfig.ready``)."""
    customers_created.connect(_on_customers_created, dispatch_uid="experiments.impressions_link_customers")
