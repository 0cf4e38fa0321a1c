"""Experiment use cases: assignment on the hot path, impression logging, the experiment lifecycle, results and the
bandit. Serving code (ranking) talks to this module only, through ``assign`` and ``impression_log``.

Hot path: ``assign`` runs no query. Running experiments, variants and surface defaults live in an in-process snapshot
that is checked against the Redis version token ``exp:version`` at most once a second and reloaded when the token
changed (every lifecycle service writes a new token after commit). With Redis down the snapshot is reloaded from
Postgres, still at most once a second.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Model
from django.utils import timezone

from experiments import keys, selectors, stats
from experiments.bandit import floored_shares
from experiments.config import InvalidConfig, VariantConfig, merged
from experiments.hashing import bucket, bucket_ranges, choose_variant, in_namespace
from experiments.metrics import ASSIGNMENT_SNAPSHOT_RELOADS, IMPRESSION_LOG_ERRORS, IMPRESSIONS_STORED
from experiments.models import BanditWeightLog, Experiment, SurfaceDefault, Variant
from experiments.results import ExperimentResults, VariantTotals, results_build
from experiments.validation import (
    VariantSpec,
    guardrail_errors,
    namespace_errors,
    namespaces_overlap,
    variant_set_errors,
)
from kernel import redis_client
from kernel.background import Periodic

logger = logging.getLogger(__name__)

__all__ = [
    "IMPRESSION_PUSH_INTERVAL_SECONDS",
    "Assignment",
    "ExperimentError",
    "ExperimentNotFound",
    "FlushSummary",
    "VariantSpec",
    "assign",
    "assignment_cache_clear",
    "bandit_reweight",
    "experiment_conclude",
    "experiment_create",
    "experiment_results",
    "experiment_start",
    "experiment_stop",
    "impression_log",
    "impressions_flush",
    "impressions_buffer_clear",
    "impressions_push",
    "surface_default_set",
]


class ExperimentError(Exception):
    """A lifecycle request that cannot be carried out; the message says why, in words for a merchandiser."""


class ExperimentNotFound(ExperimentError):
    pass


# --- assignment -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """What serving needs for one request: the variant (if any) and the configuration to serve with.

    ``experiment_key``/``variant`` name the one experiment of the surface the unit is in (running experiments of a
    surface are mutually exclusive). ``forced`` marks a QA override: such requests are served the variant but left
    out of the experiment's results.
    """

    experiment_key: str | None
    variant: str | None
    config: VariantConfig
    forced: bool = False


@dataclass(frozen=True)
class _Arm:
    name: str
    config: VariantConfig  # the surface default with the variant's override applied


@dataclass(frozen=True)
class _CompiledExperiment:
    key: str
    seed: str
    namespace: tuple[str, float, float] | None  # GrowthBook's [id, start, end); None: the whole surface
    ranges: tuple[tuple[float, float], ...]
    arms: tuple[_Arm, ...]
    index: dict[str, int]  # variant name -> arm index


@dataclass(frozen=True)
class _Snapshot:
    token: object  # the exp:version token it was loaded under; _UNKNOWN when Redis could not be read
    loaded_at: float
    by_surface: dict[str, tuple[_CompiledExperiment, ...]]
    defaults: dict[str, VariantConfig]


_PLATFORM_DEFAULT = VariantConfig()
_UNKNOWN = object()  # never equal to a token read from Redis, so the next successful read reloads
_CHECK_SECONDS = 1.0
# A safety net for a lost version write (Redis blip right after a commit): reload at least this often anyway.
_MAX_AGE_SECONDS = 60.0
_clock = time.monotonic
_refresh_lock = threading.Lock()
_snapshot: _Snapshot | None = None
_checked_at = -math.inf


def assign(*, surface: str, unit_id: str, forced_variant: str | None = None) -> Assignment:
    """The variant and serving configuration of ``unit_id`` (a customer's external id, or ``s:<session id>``) on
    ``surface``: the running experiment whose namespace range holds the unit (GrowthBook ``inNamespace``; an
    experiment without a namespace holds every unit), then GrowthBook hash v2 of ``seed + unit_id`` against its
    variants' bucket ranges. Deterministic and query-free.

    ``forced_variant`` (``"variant"`` or ``"experiment-key:variant"``; the caller checks the admin scope) serves
    that variant when a running experiment on the surface has it, whatever the unit's namespace range. No running
    experiment (or none holding the unit): the surface default.
    """
    snapshot = _current_snapshot()
    default = snapshot.defaults.get(surface, _PLATFORM_DEFAULT)
    experiments = snapshot.by_surface.get(surface)
    if not experiments:
        return Assignment(None, None, default)
    forced_key, forced_name = _parse_forced(forced_variant)
    if forced_name is not None:
        for experiment in experiments:
            index = experiment.index.get(forced_name, -1) if forced_key in (None, experiment.key) else -1
            if index >= 0:
                return Assignment(experiment.key, forced_name, experiment.arms[index].config, forced=True)
    for experiment in experiments:
        if experiment.namespace is not None and not in_namespace(unit_id, experiment.namespace):
            continue
        index = choose_variant(bucket(experiment.seed, unit_id), experiment.ranges)
        if index < 0:  # outside the experiment's coverage
            return Assignment(None, None, default)
        # Ranges of one namespace are disjoint (a database constraint), so no later experiment could hold the unit.
        return Assignment(experiment.key, experiment.arms[index].name, experiment.arms[index].config)
    return Assignment(None, None, default)


def surface_known(surface: str) -> bool:
    """Whether a running experiment or a stored surface default names ``surface`` (from the in-process snapshot,
    no query): metrics label only known surfaces by name (kernel.metrics.metric_surface)."""
    snapshot = _current_snapshot()
    return surface in snapshot.defaults or surface in snapshot.by_surface


def variant_known(variant: str) -> bool:
    """Whether a running experiment has a variant called ``variant`` (from the snapshot, no query)."""
    snapshot = _current_snapshot()
    return any(variant in experiment.index for group in snapshot.by_surface.values() for experiment in group)


def assignment_cache_clear() -> None:
    """Forget the in-process snapshot (tests; the next ``assign`` reloads)."""
    global _snapshot, _checked_at
    with _refresh_lock:
        _snapshot = None
        _checked_at = -math.inf


def _parse_forced(forced_variant: str | None) -> tuple[str | None, str | None]:
    if not forced_variant:
        return None, None
    key, sep, name = forced_variant.partition(":")
    return (key, name) if sep else (None, forced_variant)


def _current_snapshot() -> _Snapshot:
    global _snapshot, _checked_at
    snapshot = _snapshot
    if snapshot is not None and _clock() - _checked_at < _CHECK_SECONDS:
        return snapshot
    # One thread refreshes; the others keep serving the current snapshot instead of queueing behind it.
    if not _refresh_lock.acquire(blocking=snapshot is None):
        return snapshot  # type: ignore[return-value]  # not None: a None snapshot blocks above
    try:
        now = _clock()
        snapshot = _snapshot
        if snapshot is not None and now - _checked_at < _CHECK_SECONDS:
            return snapshot
        _checked_at = now
        try:
            raw = redis_client.get().get(keys.VERSION)
            token: object = raw.decode() if raw is not None else None
        except redis.RedisError:
            logger.warning("experiment_version_unreadable", exc_info=True)
            token = _UNKNOWN
        if snapshot is not None and token is not _UNKNOWN and token == snapshot.token:
            if now - snapshot.loaded_at < _MAX_AGE_SECONDS:
                return snapshot
            cause = "max_age"
        else:
            cause = "cold" if snapshot is None else ("redis_unavailable" if token is _UNKNOWN else "version")
        try:
            data = selectors.serving_data()
        except DatabaseError:
            logger.exception("experiment_snapshot_load_failed")
            if snapshot is not None:
                return snapshot
            # Serve the platform defaults rather than fail requests; retried after _CHECK_SECONDS.
            _snapshot = _Snapshot(_UNKNOWN, now, {}, {})
            return _snapshot
        _snapshot = _compile(data, token, now)
        ASSIGNMENT_SNAPSHOT_RELOADS.labels(cause=cause).inc()
        return _snapshot
    finally:
        _refresh_lock.release()


def _compile(data: selectors.ServingData, token: object, now: float) -> _Snapshot:
    """Precompute what ``assign`` needs. A row that fails validation (written behind the services' back) is logged
    and skipped: serving the default beats failing every request of the surface."""
    defaults: dict[str, VariantConfig] = {}
    for surface, config in data.surface_defaults.items():
        try:
            defaults[surface] = merged(_PLATFORM_DEFAULT, config)
        except InvalidConfig:
            logger.exception("surface_default_invalid", extra={"surface": surface})
    by_surface: dict[str, list[_CompiledExperiment]] = defaultdict(list)
    for experiment in data.experiments:
        default = defaults.get(experiment.surface, _PLATFORM_DEFAULT)
        try:
            arms = [_Arm(variant.name, merged(default, variant.config)) for variant in experiment.variants]
            ranges = tuple(bucket_ranges([v.weight for v in experiment.variants]))
        except ValueError:  # InvalidConfig is a ValueError, as are bad weights
            logger.exception("experiment_invalid_in_snapshot", extra={"experiment": experiment.key})
            continue
        by_surface[experiment.surface].append(
            _CompiledExperiment(
                experiment.key,
                experiment.seed,
                experiment.namespace,
                ranges,
                tuple(arms),
                {arm.name: i for i, arm in enumerate(arms)},
            )
        )
    ordered = {
        surface: tuple(sorted(items, key=lambda e: e.namespace[1] if e.namespace else -1.0))
        for surface, items in by_surface.items()
    }
    return _Snapshot(token, now, ordered, defaults)


def _version_bump() -> None:
    """Make every process reload its snapshot within a second. Runs after commit, so a reload sees the change."""
    try:
        redis_client.get().set(keys.VERSION, uuid.uuid4().hex)
    except redis.RedisError:
        # Processes still pick the change up within _MAX_AGE_SECONDS (or every second while Redis is down).
        logger.exception("experiment_version_bump_failed")


def _version_bump_on_commit() -> None:
    transaction.on_commit(_version_bump)


# --- impressions ----------------------------------------------------------------------------------------------

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

    ``customer_id`` is the customer's external id ("" for anonymous traffic, then ``session_id`` identifies the
    unit). Forced (QA) assignments are logged without their experiment, so they never enter its results.
    ``latency_ms`` is how long serving took to make the list (the latency guardrail's p95 per variant).
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
            raw = client.lrange(keys.IMPRESSIONS_PROCESSING, 0, batch_size - 1)
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
        latency_ms)
SELECT r, to_timestamp(t), s, c, ss, e, v, m, i::bigint[], l
  FROM unnest(%s::text[], %s::float8[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::bigint[],
              %s::integer[], %s::text[], %s::float8[]) AS u(r, t, s, c, ss, e, v, m, i, l)
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
        customers = _customer_pks({r["c"] for r in parsed if r["c"]})
        wanted = {(key, name) for r in parsed for key, name in r["x"]}
        variants = {
            (key, name): (experiment_id, variant_id)
            for key, name, experiment_id, variant_id in Variant.objects.filter(
                experiment__key__in={key for key, _ in wanted}
            ).values_list("experiment__key", "name", "experiment_id", "pk")
            if (key, name) in wanted
        }
        columns: list[list[Any]] = [[] for _ in range(10)]
        for r in parsed:
            resolved = [variants[m] for m in map(tuple, r["x"]) if m in variants] or [(None, None)]
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


_SELECT_CUSTOMERS = "SELECT external_id, id FROM catalog_customer WHERE external_id = ANY(%s::text[])"


def _customer_pks(external_ids: set[str]) -> dict[str, int]:
    """Primary keys of the customers that exist. A served list never creates a customer: a read must not create
    data, and an id erased meanwhile must not come back. The impression of an unknown (or erased) id is stored
    without a customer (its session and request id still attribute it); a customer whose first event arrives
    before the flush (every ten seconds) is linked."""
    if not external_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_SELECT_CUSTOMERS, [sorted(external_ids)])
        return dict(cursor.fetchall())


# --- lifecycle ------------------------------------------------------------------------------------------------


def experiment_create(
    *,
    key: str,
    name: str,
    surface: str,
    variants: Sequence[VariantSpec],
    namespace: tuple[str, float, float] | None = None,
    mode: str = Experiment.Mode.AB,
    primary_metric: str = Experiment.Metric.CONVERSION_RATE,
    guardrails: dict[str, float] | None = None,
    minimum_detectable_effect: float = 0.05,
    attribution_window_hours: int = 24,
    hash_seed: str = "",
    hypothesis: str = "",
    created_by_id: int | None = None,
) -> Experiment:
    """A draft experiment with its variants, validated as the admin validates it. Starting is a separate step.

    ``namespace`` is GrowthBook's ``(id, start, end)``: experiments of one surface in disjoint ranges of one namespace
    may run at the same time and never share a unit; without one the experiment takes the whole surface.
    """
    errors = variant_set_errors(variants) + guardrail_errors(guardrails or {}) + namespace_errors(namespace)
    if errors:
        raise ExperimentError(" ".join(errors))
    with transaction.atomic():
        experiment = Experiment.objects.create(
            key=key,
            name=name,
            surface=surface,
            namespace=namespace[0] if namespace else None,
            namespace_start=namespace[1] if namespace else None,
            namespace_end=namespace[2] if namespace else None,
            mode=mode,
            primary_metric=primary_metric,
            guardrails=dict(guardrails or {}),
            minimum_detectable_effect=minimum_detectable_effect,
            attribution_window_hours=attribution_window_hours,
            hash_seed=hash_seed or key,
            hypothesis=hypothesis,
            created_by_id=created_by_id,
        )
        Variant.objects.bulk_create(
            Variant(experiment=experiment, name=v.name, weight=v.weight, is_control=v.is_control, config=dict(v.config))
            for v in sorted(variants, key=lambda v: not v.is_control)
        )
    return experiment


@transaction.atomic
def experiment_start(*, experiment_id: int, user_id: int) -> Experiment:
    """Start a draft: validate its variants (weights sum to 1, one control, valid configs) under a row lock, refuse
    it while a running experiment on the same surface could share a unit with it (anything but disjoint ranges of
    one namespace), and publish it to every web process.

    The database re-checks (deferred trigger on weights and control; exclusion constraints on the surface's running
    namespaces), so a concurrent change between the check and the commit still cannot produce an invalid running
    experiment.
    """
    experiment = _locked(experiment_id)
    if experiment.status != Experiment.Status.DRAFT:
        raise ExperimentError(f"Only a draft can be started; {experiment.key} is {experiment.status}.")
    variants = list(Variant.objects.select_for_update().filter(experiment=experiment).order_by("-is_control", "pk"))
    specs = [VariantSpec(v.name, v.weight, v.is_control, v.config) for v in variants]
    errors = (
        variant_set_errors(specs)
        + guardrail_errors(experiment.guardrails)
        + namespace_errors(
            None
            if experiment.namespace is None
            else (experiment.namespace, experiment.namespace_start, experiment.namespace_end)
        )
    )
    if errors:
        raise ExperimentError(" ".join(errors))
    for running in Experiment.objects.filter(surface=experiment.surface, status=Experiment.Status.RUNNING):
        if namespaces_overlap(running.namespace_spec, experiment.namespace_spec):
            raise ExperimentError(
                f"{running.key} is already running on {experiment.surface} and could share customers with "
                f"{experiment.key}; stop it first, or give both the same namespace with disjoint ranges."
            )

    experiment.status = Experiment.Status.RUNNING
    experiment.start_at = timezone.now()
    experiment.end_at = None
    experiment.hash_seed = experiment.hash_seed or experiment.key
    try:
        with transaction.atomic():
            experiment.save(update_fields=["status", "start_at", "end_at", "hash_seed", "updated_at"])
    except IntegrityError as exc:  # a concurrent start won the race for the surface's namespace range
        raise ExperimentError(
            f"Another experiment that could share customers with {experiment.key} started on {experiment.surface} "
            "at the same time."
        ) from exc
    if experiment.mode == Experiment.Mode.BANDIT:
        BanditWeightLog.objects.bulk_create(
            BanditWeightLog(experiment=experiment, variant=v, weight=v.weight, at=experiment.start_at) for v in variants
        )
    split = ", ".join(f"{v.name} {v.weight:.0%}" for v in variants)
    _audit(user_id=user_id, obj=experiment, message=f"Started on {experiment.surface} ({split}).")
    _version_bump_on_commit()
    logger.info("experiment_started", extra={"experiment": experiment.key, "user_id": user_id})
    return experiment


@transaction.atomic
def experiment_stop(*, experiment_id: int, user_id: int) -> Experiment:
    """Stop a running experiment: its surface serves the default again. Results stay readable."""
    experiment = _locked(experiment_id)
    if experiment.status != Experiment.Status.RUNNING:
        raise ExperimentError(f"Only a running experiment can be stopped; {experiment.key} is {experiment.status}.")
    experiment.status = Experiment.Status.STOPPED
    experiment.end_at = timezone.now()
    experiment.save(update_fields=["status", "end_at", "updated_at"])
    _audit(user_id=user_id, obj=experiment, message="Stopped.")
    _version_bump_on_commit()
    logger.info("experiment_stopped", extra={"experiment": experiment.key, "user_id": user_id})
    return experiment


@transaction.atomic
def experiment_conclude(*, experiment_id: int, winner: str | None, user_id: int) -> Experiment:
    """Close a running or stopped experiment. With a ``winner`` (a variant name), its settings become the surface's
    default (``SurfaceDefault``) in the same transaction; without one the default stays (a roll-back)."""
    experiment = _locked(experiment_id)
    if experiment.status not in (Experiment.Status.RUNNING, Experiment.Status.STOPPED):
        raise ExperimentError(
            f"Only a running or stopped experiment can be concluded; {experiment.key} is {experiment.status}."
        )
    winner_variant = None
    if winner is not None:
        winner_variant = Variant.objects.filter(experiment=experiment, name=winner).first()
        if winner_variant is None:
            raise ExperimentError(f"{experiment.key} has no variant named {winner!r}.")
    experiment.status = Experiment.Status.CONCLUDED
    experiment.end_at = experiment.end_at or timezone.now()
    experiment.winner = winner_variant
    experiment.save(update_fields=["status", "end_at", "winner", "updated_at"])
    if winner_variant is None:
        _audit(user_id=user_id, obj=experiment, message="Concluded without a winner; the surface default is unchanged.")
    else:
        default, _ = SurfaceDefault.objects.select_for_update().get_or_create(surface=experiment.surface)
        default.config = {**default.config, **winner_variant.config}
        try:
            merged(_PLATFORM_DEFAULT, default.config)
        except InvalidConfig as exc:
            raise ExperimentError(f"The winner's settings are not valid as a default: {exc}") from exc
        default.save(update_fields=["config", "updated_at"])
        _audit(
            user_id=user_id,
            obj=experiment,
            message=f"Concluded with winner {winner_variant.name}; its settings are now the {experiment.surface} "
            "default.",
        )
        _audit(
            user_id=user_id,
            obj=default,
            message=f"Set from the winner {winner_variant.name} of {experiment.key}: {json.dumps(default.config)}",
        )
    _version_bump_on_commit()
    logger.info("experiment_concluded", extra={"experiment": experiment.key, "winner": winner, "user_id": user_id})
    return experiment


@transaction.atomic
def surface_default_set(*, surface: str, config: dict[str, Any], user_id: int | None = None) -> SurfaceDefault:
    """Set what ``surface`` serves outside experiments (the settings that differ from the platform defaults)."""
    try:
        merged(_PLATFORM_DEFAULT, config)
    except InvalidConfig as exc:
        raise ExperimentError(f"Invalid configuration: {exc}") from exc
    default, _ = SurfaceDefault.objects.update_or_create(surface=surface, defaults={"config": dict(config)})
    if user_id is not None:
        _audit(user_id=user_id, obj=default, message=f"Set to {json.dumps(default.config)}.")
    _version_bump_on_commit()
    return default


def _locked(experiment_id: int) -> Experiment:
    experiment = Experiment.objects.select_for_update().filter(pk=experiment_id).first()
    if experiment is None:
        raise ExperimentNotFound(f"No experiment with id {experiment_id}.")
    return experiment


def _audit(*, user_id: int, obj: Model, message: str) -> None:
    """The admin's history ("History" on the object's page) records who did what, whatever the entry point."""
    LogEntry.objects.log_actions(
        user_id=user_id, queryset=[obj], action_flag=CHANGE, change_message=message, single_object=True
    )


# --- results --------------------------------------------------------------------------------------------------


def experiment_results(*, key: str) -> ExperimentResults:
    """Per-variant metrics, comparisons with the control and diagnostics (see docs/experiments.md).

    Outside a transaction the queries share one snapshot (REPEATABLE READ, read only), so totals and series agree;
    inside a caller's transaction they use its snapshot.
    """
    if connection.in_atomic_block:
        return _experiment_results(key)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return _experiment_results(key)


def _experiment_results(key: str) -> ExperimentResults:
    spec = selectors.experiment_spec(key=key)
    if spec is None:
        raise ExperimentNotFound(f"No experiment with key {key!r}.")
    if sum(v.is_control for v in spec.variants) != 1:
        raise ExperimentError(f"{key} needs exactly one control variant before it has results.")
    started = spec.start_at is not None
    params = {"experiment_id": spec.id, "window_hours": spec.attribution_window_hours}
    return results_build(
        spec=spec,
        totals=selectors.variant_totals(**params) if started else {},
        daily=selectors.daily_totals(**params) if started else [],
        items_shown=selectors.items_shown(experiment_id=spec.id) if started else {},
        active_items=selectors.active_item_count(),
        cuped=selectors.cuped_data(**params, start_at=spec.start_at) if spec.start_at else None,
        weight_history=selectors.weight_history(experiment_id=spec.id),
        # Only for an experiment that has this guardrail: the query sorts every impression's latency.
        latency_p95_ms=(
            selectors.latency_p95_ms(experiment_id=spec.id) if started and "latency_p95_ms" in spec.guardrails else None
        ),
        computed_at=timezone.now(),
    )


# --- bandit ---------------------------------------------------------------------------------------------------

BANDIT_MIN_SHARE = 0.05


def bandit_reweight(*, experiment_id: int, min_share: float = BANDIT_MIN_SHARE) -> tuple[float, ...] | None:
    """Thompson sampling by probability matching: each arm's new weight is P(arm is best) on the primary metric
    (Beta(1, 1) posteriors of conversions / exposures; clicked impressions / impressions for CTR; conversions for
    revenue), floored at ``min_share`` and renormalised, written atomically and logged in ``BanditWeightLog``.

    Returns the new weights in variant order, or None when the experiment is not a running bandit or an arm has no
    exposures yet (nothing to learn from: the weights stay).
    """
    experiment = Experiment.objects.filter(
        pk=experiment_id, status=Experiment.Status.RUNNING, mode=Experiment.Mode.BANDIT
    ).first()
    if experiment is None:
        return None
    # Aggregate before taking locks: the query can take a while and must not block a merchandiser's stop.
    totals = selectors.variant_totals(experiment_id=experiment.pk, window_hours=experiment.attribution_window_hours)
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if experiment.status != Experiment.Status.RUNNING or experiment.mode != Experiment.Mode.BANDIT:
            return None
        variants = list(Variant.objects.select_for_update().filter(experiment=experiment).order_by("-is_control", "pk"))
        arms = [_bandit_arm(totals.get(v.pk), experiment.primary_metric) for v in variants]
        if any(n == 0 for n, _ in arms):
            logger.info("bandit_reweight_waiting", extra={"experiment": experiment.key, "arms": arms})
            return None
        shares = floored_shares(stats.probability_best(arms), min_share)
        now = timezone.now()
        for variant, share in zip(variants, shares, strict=True):
            variant.weight = share
        Variant.objects.bulk_update(variants, ["weight"])
        BanditWeightLog.objects.bulk_create(
            BanditWeightLog(experiment=experiment, variant=v, weight=v.weight, at=now) for v in variants
        )
        _version_bump_on_commit()
    logger.info(
        "bandit_reweighted",
        extra={"experiment": experiment.key, "weights": {v.name: round(v.weight, 4) for v in variants}},
    )
    return tuple(shares)


def _bandit_arm(totals: VariantTotals | None, metric: str) -> tuple[int, int]:
    if totals is None:
        return 0, 0
    if metric == Experiment.Metric.CTR:
        return totals.impressions, totals.clicks
    if metric == Experiment.Metric.ADD_TO_CART_RATE:
        return totals.exposures, totals.carted_units
    return totals.exposures, totals.converted_units
