"""The online state's fold (item features) and its rebuild from Postgres, and the request for a rebuild."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import kombu.exceptions
import redis
from celery import current_app
from django.db import connection, transaction

from catalog import selectors as catalog_selectors
from events import keys, online
from events.features import (
    AFFINITY_HALF_LIFE_SECONDS,
    COUNTED_NAMES,
    COUNTED_TYPES,
    DECAY_LANDMARK,
    DISMISS,
    HOURS_7D,
    INTEREST_WEIGHTS,
    RATING,
    RATING_MAX,
    RATING_MIN,
    RATING_WEIGHT_PER_POINT,
    fold_counters,
)
from events.parsing import event_time_sql
from kernel import redis_client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldSummary:
    items: int  # items with activity in the last seven days
    version: str
    seconds: float


def item_features_fold(*, now: float | None = None) -> FoldSummary:
    """Fold the hourly item counters of the last seven days into the item-features blob (idempotent)."""
    started = time.perf_counter()
    now = time.time() if now is None else now
    item_pk, count, type_index, age_hours = online.read_counter_cells(hours=HOURS_7D, now=now)
    features = fold_counters(item_pk=item_pk, count=count, type_index=type_index, age_hours=age_hours, computed_at=now)
    version = online.write_item_features(features.to_bytes())
    summary = FoldSummary(items=int(features.item_pk.size), version=version, seconds=time.perf_counter() - started)
    logger.info("item_features_folded", extra={"items": summary.items, "seconds": round(summary.seconds, 3)})
    return summary


class RebuildInProgress(Exception):
    """Another rebuild holds the lock; ``retry_after``: seconds until that lock expires unless its holder renews it
    (at most ``REBUILD_LOCK_SECONDS``), i.e. when a holder that died has let go of it."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RebuildAborted(Exception):
    """A rebuild that could not vouch for what it wrote, so it left the online state marked incomplete: its lock
    was lost (another rebuild may be writing), or a Redis Cluster master restarted empty while it ran. Run it
    again (the task does so by itself)."""


@dataclass
class RebuildSummary:
    keys_cleared: int = 0
    owners: int = 0
    history_entries: int = 0
    affinity_pairs: int = 0
    dismissed_items: int = 0
    had_items: int = 0
    counter_cells: int = 0
    items_folded: int = 0
    # Customers erased (or deleted) while the rebuild ran: written back from its snapshot, then forgotten again.
    owners_forgotten: int = 0
    seconds: float = 0.0
    # only_if_incomplete and the state was complete once the lock was taken: nothing cleared, nothing written.
    skipped: bool = False

    def table(self) -> str:
        rows = [
            ("keys cleared", self.keys_cleared),
            ("owners (customers + sessions)", self.owners),
            ("history entries", self.history_entries),
            ("affinity pairs", self.affinity_pairs),
            ("dismissed items", self.dismissed_items),
            ("had items (bought, rated)", self.had_items),
            ("counter cells", self.counter_cells),
            ("items folded", self.items_folded),
            ("customers gone meanwhile, forgotten", self.owners_forgotten),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {count:>12,}" for name, count in rows]
        lines.append(f"{'seconds':<{width}}  {self.seconds:>12,.1f}")
        return "\n".join(lines)


# How far a rebuild got, reported as it gets there (online_state_rebuild's on_stage): "clearing" once the state is
# marked incomplete (its keys are being deleted), "rebuilding" once they are (written again from Postgres),
# "complete" once the marker is back.
RebuildStage = Literal["clearing", "rebuilding", "complete"]


# Kept alive by a heartbeat while the rebuild runs: one that dies (a killed command or worker) frees it this soon.
# It was 4 hours, never renewed: a killed rebuild left serving degraded and every rebuild refused that long (found by
# a sixth tester, 5 December).
REBUILD_LOCK_SECONDS = 120
REBUILD_LOCK_HEARTBEAT_SECONDS = 30
# How long a running rebuild's hold on the request for a rebuild (keys.REBUILD_REQUESTED) lasts unless the lock's
# heartbeat renews it, so a rebuild killed outright (SIGKILL: nothing of it runs) stops keeping serving from asking for
# another within a minute. It held it for a queued request's 15 minutes (REBUILD_REQUEST_SECONDS): every personal list
# degraded that long, and no rebuild asked for (a ninth tester, 6 December). Two beats per life: one missed beat (a
# Redis blip) does not let it go.
REBUILD_RUNNING_REQUEST_SECONDS = 60
_REBUILD_CHUNK = 5000


def online_state_rebuild(
    *,
    history_length: int = online.HISTORY_LENGTH,
    on_progress: Callable[[str, int], None] | None = None,
    on_stage: Callable[[RebuildStage], None] | None = None,
    only_if_incomplete: bool = False,
) -> RebuildSummary:
    """Rebuild the whole online state from Postgres, e.g. after Redis lost its data.

    Clears our rebuildable keys (SCAN by prefix), then streams from one REPEATABLE READ snapshot: each owner's
    latest ``history_length`` events, every owner's category affinities, the hourly item counters of the last
    eight days, every owner's had items (the newest ``online.HAD_LENGTH`` distinct items bought or rated, over
    their whole history); bumps every owner's cache version and folds the item features. Idempotent; one at a time
    (a Redis lock). Events ingested while it runs may be counted twice in counters and affinities until the next
    rebuild; histories are exact (re-adding an event is a no-op). A customer erased while it runs is forgotten
    again once everything is written (:func:`_forget_gone_customers`). ``on_progress(stage, rows)`` reports rows as
    they stream; ``on_stage(stage)`` how far it got (:data:`RebuildStage`), so a caller it stops short can say
    what it left. ``only_if_incomplete`` (serving's requests for a rebuild): once the lock is taken, a state that is
    complete is left as it is and the summary says ``skipped``.

    While it runs it counts as the requested rebuild (``keys.REBUILD_REQUESTED``), held for
    ``REBUILD_RUNNING_REQUEST_SECONDS`` at a time and renewed by its lock's heartbeat; however it stops short (any
    exception, ``KeyboardInterrupt`` and ``SystemExit`` included) it releases that request, if still its own (one
    that lost its lock leaves the request of the rebuild that took it), and re-raises, so serving, finding the state
    incomplete, asks for another at once.
    """
    started = time.perf_counter()
    running = False
    # This rebuild's hold on the request: a rebuild that lost its lock releases only its own, not the one the rebuild
    # that took the lock holds (a reviewer, 6 December).
    token = online.rebuild_token()

    def hold_request() -> None:
        online.hold_rebuild_request(ttl_seconds=REBUILD_RUNNING_REQUEST_SECONDS, token=token)

    try:
        with redis_client.kept_lock(
            keys.REBUILD_LOCK, seconds=REBUILD_LOCK_SECONDS, heartbeat=REBUILD_LOCK_HEARTBEAT_SECONDS,
            on_beat=hold_request,
        ) as held:  # fmt: skip
            if not held:
                raise RebuildInProgress(
                    f"another rebuild_online_state is running (Redis lock {keys.REBUILD_LOCK}; one that died frees "
                    f"it within {REBUILD_LOCK_SECONDS} s)",
                    retry_after=_lock_expires_in(),
                )
            # Under the lock, where no other rebuild can finish in between: a task that checked before taking it could
            # wait behind another rebuild, find the lock free once that one completed the state, and clear it again
            # (a reviewer, 6 December).
            if only_if_incomplete and online.read_complete():
                logger.info("online_state_rebuild_skipped", extra={"reason": "complete"})
                return RebuildSummary(skipped=True, seconds=time.perf_counter() - started)
            running = True
            summary = _rebuild(history_length, on_progress, on_stage, held, token)
    except BaseException:
        # However it stopped short (an error, Redis, a lost lock, Ctrl-C, SIGTERM, a task's soft time limit), it left
        # the state incomplete and no longer counts as the requested rebuild: serving may ask again at once (only
        # SIGKILL, where nothing runs, leaves the request to its short expiry). Only two errors released it before: a
        # Ctrl-C'd command left every personal list degraded for 15 minutes (a ninth tester, 6 December). After
        # the lock is released, so the rebuild serving asks for next does not find it held and wait for it. Only
        # while it still holds this rebuild's token: after a lost lock it may be the request of the one that took it.
        if running:
            online.release_rebuild_request(token=token)
        raise
    summary.seconds = time.perf_counter() - started
    logger.info("online_state_rebuilt", extra={"owners": summary.owners, "seconds": round(summary.seconds, 1)})
    return summary


def _lock_expires_in() -> float:
    """Seconds until the rebuild lock expires unless renewed (``REBUILD_LOCK_SECONDS`` when Redis cannot say)."""
    try:
        ms = cast(int, redis_client.get().pttl(keys.REBUILD_LOCK))  # a sync client: an int, not an awaitable
    except redis.RedisError:
        return float(REBUILD_LOCK_SECONDS)
    return min(ms / 1000, float(REBUILD_LOCK_SECONDS)) if ms > 0 else float(REBUILD_LOCK_SECONDS)


def _rebuild(
    history_length: int,
    on_progress: Callable[[str, int], None] | None,
    on_stage: Callable[[RebuildStage], None] | None,
    held: redis_client.KeptLock,
    token: str,
) -> RebuildSummary:
    summary = RebuildSummary()
    report = on_progress or (lambda stage, rows: None)
    reached = on_stage or (lambda stage: None)

    def still_held() -> None:
        if held.lost:  # another rebuild may be writing now: stop at the next chunk rather than write over it
            raise RebuildAborted(_LOCK_LOST)

    def progress(stage: str, rows: int) -> None:
        still_held()
        report(stage, rows)

    online.mark_incomplete(request_ttl_seconds=REBUILD_RUNNING_REQUEST_SECONDS, token=token)
    reached("clearing")
    summary.keys_cleared = online.clear_rebuildable()
    # On a cluster, one sentinel per master before the first write: a master that restarts empty while this runs
    # loses its sentinel with what was written to it, and the check before the marker sees it.
    online.write_node_sentinels()
    reached("rebuilding")
    snapshot = not connection.in_atomic_block
    with transaction.atomic():
        if snapshot:
            # One snapshot for the three reads, so history, affinities and counters describe the same events.
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # The customer rows the snapshot saw behind each customer owner written (checked again at the end).
        customer_pks: dict[str, int] = {}
        owners = _rebuild_histories(summary, history_length, progress, customer_pks)
        owners |= _rebuild_dismissed(summary, progress, customer_pks)
        owners |= _rebuild_had(summary, progress)
        _rebuild_affinities(summary, progress)
        _rebuild_counters(summary, progress)
    owner_list = sorted(owners)
    for start in range(0, len(owner_list), _REBUILD_CHUNK):
        online.bump_cache_versions(owner_list[start : start + _REBUILD_CHUNK])
    summary.owners = len(owners)
    summary.owners_forgotten = _forget_gone_customers(customer_pks)
    still_held()
    summary.items_folded = item_features_fold().items
    _vouch(held)
    online.mark_complete(now=time.time(), sentinels=False)  # this rebuild's, written before its first write
    reached("complete")
    return summary


_LOCK_LOST = (
    f"the rebuild's Redis lock ({keys.REBUILD_LOCK}) was lost while it ran (Redis restarted, or was out longer "
    "than the lock lives): another rebuild may be writing, so the state stays marked incomplete"
)


def _vouch(held: redis_client.KeptLock) -> None:
    """Raise :class:`RebuildAborted` unless what this rebuild wrote is all there and no other rebuild can be writing:
    the lock still this rebuild's (the heartbeat's last look may be a beat old, so Redis is asked now), and every
    master's sentinel still there. The marker would otherwise vouch for a state that lost part of its writes."""
    for attempt in range(3):  # a Redis blip here would throw the whole rebuild away: twice more, half a second apart
        try:
            confirmed, lost = held.confirm(), online.node_sentinels_lost()
            break
        except redis.RedisError:
            if attempt == 2:
                raise
            time.sleep(0.5)
    if not confirmed:
        raise RebuildAborted(_LOCK_LOST)
    if lost:
        raise RebuildAborted(
            f"{len(lost)} Redis Cluster master(s) lost their data while the rebuild ran ({', '.join(lost)}): the "
            "state stays marked incomplete"
        )


# Long enough for a queued rebuild to be picked up by a busy worker. Once one runs, it holds the request for
# REBUILD_RUNNING_REQUEST_SECONDS at a time, and releases it when it ends, however it ends.
REBUILD_REQUEST_SECONDS = 900
REBUILD_TASK = "events.tasks.rebuild_online_state"


def online_state_rebuild_request() -> bool:
    """Queue ``rebuild_online_state`` because Redis lost the online state (see ``keys.ONLINE_STATE_COMPLETE``);
    True if this call queued it. Once for any number of callers and processes: the first claims
    ``keys.REBUILD_REQUESTED`` (NX); it is released when a rebuild ends, or expires after
    ``REBUILD_REQUEST_SECONDS`` so a rebuild that never ran (no worker, a crash) is asked for again. Never raises:
    callers are serving requests, which answer from Postgres meanwhile."""
    try:
        if not online.claim_rebuild_request(ttl_seconds=REBUILD_REQUEST_SECONDS):
            return False
        # By name (routed like the task itself): the tasks module calls this one, so it is not imported here. Only if
        # the state is still incomplete when it runs: a copy the broker redelivers hours later (a worker killed while
        # it ran, docs/reliability.md "Worker down") must not clear a state that is whole again.
        current_app.send_task(REBUILD_TASK, kwargs={"only_if_incomplete": True})
    except (redis.RedisError, kombu.exceptions.OperationalError):
        # Redis (the broker too) unreachable: let the next request try again.
        logger.warning("online_state_rebuild_request_failed", exc_info=True)
        online.release_rebuild_request(token=online.REBUILD_REQUEST_QUEUED)
        return False
    logger.warning("online_state_rebuild_requested")
    return True


def _forget_gone_customers(customer_pks: dict[str, int]) -> int:
    """Forget again the customer owners written from the snapshot whose row (the one the snapshot saw) is gone now:
    erased or deleted after the snapshot was taken, so their erasure's Redis cleanup may have run before the
    rebuild wrote their state back; by primary key, so an id erased and created again meanwhile (a PUT) is
    forgotten too and starts empty, as after any erasure. An erasure that commits after this check cleans Redis
    after these writes itself. Returns how many."""
    by_pk = {pk: owner for owner, pk in customer_pks.items()}
    pks = list(by_pk)
    forgotten = 0
    for start in range(0, len(pks), _REBUILD_CHUNK):
        chunk = pks[start : start + _REBUILD_CHUNK]
        present = catalog_selectors.customer_pks_present(pks=chunk)
        for pk in chunk:
            if pk not in present:
                online.forget_owner(by_pk[pk])
                forgotten += 1
    if forgotten:
        logger.info("online_state_rebuild_forgot_gone_customers", extra={"customers": forgotten})
    return forgotten


def _rebuild_histories(
    summary: RebuildSummary, history_length: int, progress: Callable[[str, int], None], customer_pks: dict[str, int]
) -> set[str]:
    owners: set[str] = set()
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            f"""SELECT {keys.owner_sql("c.external_id", "t.session_id")}, t.item_id, t.type, t.occurred_at, t.id,
                      t.customer_id
               FROM (
                   -- Ranked by the stored time (ranking by the clamped one made this query 15-30%% slower on 400,000
                   -- rows), written with the time the rule allows: the two differ only for rows stored outside it.
                   SELECT i.id, i.customer_id, i.session_id, i.item_id, i.type, {event_time_sql("i")} AS occurred_at,
                          row_number() OVER (
                              PARTITION BY i.customer_id, CASE WHEN i.customer_id IS NULL THEN i.session_id END
                              ORDER BY i.occurred_at DESC, i.id DESC
                          ) AS rank
                   FROM events_interaction i
                   WHERE i.type <> %s
               ) t
               LEFT JOIN catalog_customer c ON c.id = t.customer_id
               WHERE t.rank <= %s""",
            [DISMISS, history_length],
        )
        while rows := cursor.fetchmany(_REBUILD_CHUNK):
            histories: dict[str, dict[str, float]] = defaultdict(dict)
            for owner, item_pk, type_, occurred_at, interaction_pk, customer_pk in rows:
                member = online.history_member(item_pk=item_pk, type_=type_, interaction_pk=interaction_pk)
                histories[owner][member] = occurred_at.timestamp()
                if customer_pk is not None:
                    customer_pks[owner] = customer_pk
            online.write_histories(histories)
            owners.update(histories)
            summary.history_entries += len(rows)
            progress("history", len(rows))
    return owners


def _rebuild_dismissed(
    summary: RebuildSummary, progress: Callable[[str, int], None], customer_pks: dict[str, int]
) -> set[str]:
    """Every owner's dismissed items (the latest dismissal of each), as ingestion keeps them."""
    owners: set[str] = set()
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            f"""SELECT {keys.owner_sql("c.external_id", "i.session_id")}, i.item_id,
                       max(extract(epoch FROM {event_time_sql("i")}))::float8, min(i.customer_id)
                FROM events_interaction i
                LEFT JOIN catalog_customer c ON c.id = i.customer_id
                WHERE i.type = %s
                GROUP BY 1, 2""",
            [DISMISS],
        )
        while rows := cursor.fetchmany(_REBUILD_CHUNK):
            dismissed: dict[str, dict[int, float]] = defaultdict(dict)
            for owner, item_pk, ts, customer_pk in rows:
                dismissed[owner][item_pk] = ts
                if customer_pk is not None:
                    customer_pks[owner] = customer_pk
            online.write_dismissed(dismissed)
            owners.update(dismissed)
            summary.dismissed_items += len(rows)
            progress("dismissed", len(rows))
    return owners


def _rebuild_had(summary: RebuildSummary, progress: Callable[[str, int], None]) -> set[str]:
    """Every owner's had items: the distinct (item, type) pairs of their purchases and ratings with the latest time
    of each, the newest ``online.HAD_LENGTH`` per owner, as ingestion keeps them."""
    owners: set[str] = set()
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            f"""SELECT owner, item_id, type, ts
               FROM (
                   SELECT owner, item_id, type, ts,
                          row_number() OVER (PARTITION BY owner ORDER BY ts DESC, item_id, type) AS rank
                   FROM (
                       SELECT {keys.owner_sql("c.external_id", "i.session_id")} AS owner, i.item_id, i.type,
                              max(extract(epoch FROM {event_time_sql("i")}))::float8 AS ts
                       FROM events_interaction i
                       LEFT JOIN catalog_customer c ON c.id = i.customer_id
                       WHERE i.type = ANY(%s::smallint[])
                       GROUP BY 1, 2, 3
                   ) pairs
               ) ranked
               WHERE rank <= %s""",
            [list(online.HAD_TYPES), online.HAD_LENGTH],
        )
        while rows := cursor.fetchmany(_REBUILD_CHUNK):
            had: dict[str, dict[str, float]] = defaultdict(dict)
            for owner, item_pk, type_, ts in rows:
                had[owner][online.had_member(item_pk=item_pk, type_=type_)] = ts
            online.write_had(had)
            owners.update(had)
            summary.had_items += len(rows)
            progress("had", len(rows))
    return owners


def _rebuild_affinities(summary: RebuildSummary, progress: Callable[[str, int], None]) -> None:
    # The same weights and decay as ingestion (events.features), passed in as parameters.
    cases = " ".join("WHEN %s THEN %s" for _ in INTEREST_WEIGHTS)
    params: list[Any] = []
    for type_, weight in INTEREST_WEIGHTS.items():
        params += [type_, weight]
    # A rating's value clipped to its documented range, as ingestion weighs it: a row stored before that rule
    # (1e308) would otherwise overflow the sum and fail the whole rebuild.
    params += [RATING, RATING_WEIGHT_PER_POINT, RATING_MIN, RATING_MAX, DECAY_LANDMARK, AFFINITY_HALF_LIFE_SECONDS]
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            f"""SELECT {keys.owner_sql("c.external_id", "i.session_id")}, it.category_id,
                       sum(CASE i.type {cases}
                               WHEN %s THEN %s * least(greatest(coalesce(i.value, 0), %s), %s) ELSE 0 END
                           * power(2::float8, (extract(epoch FROM {event_time_sql("i")})::float8 - %s) / %s))
                FROM events_interaction i
                JOIN catalog_item it ON it.id = i.item_id
                LEFT JOIN catalog_customer c ON c.id = i.customer_id
                WHERE it.category_id IS NOT NULL AND i.type <> %s
                GROUP BY 1, 2""",
            [*params, DISMISS],
        )
        while rows := cursor.fetchmany(_REBUILD_CHUNK):
            affinities: dict[str, dict[int, float]] = defaultdict(dict)
            for owner, category_pk, score in rows:
                affinities[owner][category_pk] = score
            online.write_affinities(affinities)
            summary.affinity_pairs += len(rows)
            progress("affinities", len(rows))


def _rebuild_counters(summary: RebuildSummary, progress: Callable[[str, int], None]) -> None:
    names = dict(zip(COUNTED_TYPES, COUNTED_NAMES, strict=True))
    since = online.first_live_hour(time.time()) * online.HOUR
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            f"""SELECT i.type, floor(extract(epoch FROM {event_time_sql("i")}) / 3600)::bigint, i.item_id, count(*)
               FROM events_interaction i
               WHERE i.occurred_at >= to_timestamp(%s) AND i.type = ANY(%s::smallint[])
               GROUP BY 1, 2, 3""",
            [since, list(COUNTED_TYPES)],
        )
        while rows := cursor.fetchmany(_REBUILD_CHUNK):
            cells: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
            for type_, hour, item_pk, count in rows:
                cells[(names[type_], hour)][item_pk] = count
            online.write_counters(cells)
            summary.counter_cells += len(rows)
            progress("counters", len(rows))
