"""Event use cases: bulk import of interactions from CSV, real-time ingestion through the API, session merge,
and the online state's fold and rebuild."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import kombu.exceptions
import psycopg
import redis
from django.db import connection, transaction

from catalog import erasure
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
from events.importers import FORMATS, SkipRow
from events.metrics import EVENTS_INGESTED, EVENTS_REJECTED, ONLINE_STATE_ERRORS
from events.models import Interaction
from events.parsing import InvalidEvent, utcnow
from events.validation import ParsedEvent, Rejection, parse_events
from kernel import redis_client
from kernel.csvimport import CsvSource, ErrorLog, ImportAborted, ImportSummary, RowError, gc_paused

logger = logging.getLogger(__name__)

_STAGE = "import_event_stage"
_STAGE_COLUMNS = "line, event_id, customer, session_id, item, type, value, occurred_at"


def interactions_import(
    *,
    path: str | Path,
    fmt: str = "generic",
    create_missing_items: bool = False,
    max_errors: int | None = None,
    batch_size: int = 50_000,
    on_progress: Callable[[int], None] | None = None,
    on_error: Callable[[RowError], None] | None = None,
) -> ImportSummary:
    """Stream a CSV of interactions into Postgres: COPY each batch into a staging table, then one set-based insert
    with ``ON CONFLICT (event_id) DO NOTHING``, so a re-run stores nothing twice.

    Each batch commits on its own: an abort (``max_errors``) keeps what was stored and a re-run skips it. Bad rows
    never reach the table. ``on_progress`` gets the bytes read so far.
    """
    required, optional, make_adapter = FORMATS[fmt]
    summary = ImportSummary(path=str(path))
    errors = ErrorLog(summary, max_errors, on_error)
    started = time.perf_counter()
    writer = _BatchWriter(summary, errors, create_missing_items)
    writer.start()
    try:
        with gc_paused(), CsvSource(path, required=required, optional=optional) as source:
            adapt = make_adapter(source.index, utcnow())
            batch: list[tuple] = []
            for line, cells in source.rows(errors):
                summary.read += 1
                try:
                    batch.append((line, *adapt(cells)))
                except SkipRow as skip:
                    summary.skipped[str(skip)] += 1
                except InvalidEvent as exc:
                    errors.add(line, str(exc))
                if len(batch) >= batch_size:
                    writer.put(batch)
                    batch = []
                    if on_progress:
                        on_progress(source.position())
            if batch:
                writer.put(batch)
            writer.finish()
            if on_progress:
                on_progress(source.position())
    finally:
        writer.abandon()
    summary.seconds = time.perf_counter() - started
    logger.info(
        "interactions_imported",
        extra={
            "path": str(path),
            "read": summary.read,
            "stored": summary.stored,
            "rejected": summary.rejected,
        },
    )
    return summary


class _BatchWriter:
    """Writes batches on their own connections while the caller parses the next ones.

    Parsing is Python on one core; the inserts are Postgres, on two connections so two backends share the other
    core and the parser's idle moments. At most ``2 * writers`` batches wait in the queue, which bounds memory.
    The first error stops the writers and is raised again in the caller by ``put``/``finish``. Batches commit
    without waiting for the WAL flush; ``finish`` then makes one synchronous commit, which flushes all of them,
    before the summary can say "stored".

    Inside a caller's transaction another connection could neither see nor join it, so there the writer works
    inline, on the caller's connection, each batch a savepoint.
    """

    def __init__(
        self, summary: ImportSummary, errors: ErrorLog, create_missing_items: bool, *, writers: int = 2
    ) -> None:
        self.summary = summary
        self.errors = errors
        self.create_missing_items = create_missing_items
        self.inline = connection.in_atomic_block
        if self.inline:
            _create_stage()
        self.queue: queue.Queue[list[tuple] | None] = queue.Queue(maxsize=2 * writers)
        self.error: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._run, name=f"import-writer-{n}", daemon=True) for n in range(writers)
        ]

    def _run(self) -> None:
        try:
            _create_stage()
            while (batch := self.queue.get()) is not None:
                if self.error is None:
                    _store_batch(batch, self.summary, self.errors, self.create_missing_items)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self.error = exc
            while self.queue.get() is not None:  # drain so the caller never blocks on a full queue
                pass
        finally:
            connection.close()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def start(self) -> None:
        if not self.inline:
            for thread in self.threads:
                thread.start()

    def put(self, batch: list[tuple]) -> None:
        if self.inline:
            _store_batch(batch, self.summary, self.errors, self.create_missing_items)
            return
        self._raise()
        self.queue.put(batch)

    def finish(self) -> None:
        if not self.inline:
            for _ in self.threads:
                self.queue.put(None)
            for thread in self.threads:
                thread.join()
            self._raise()
        _flush_wal()

    def abandon(self) -> None:
        if not self.inline and any(thread.is_alive() for thread in self.threads):
            self.error = self.error or ImportAborted("import interrupted")
            for _ in self.threads:
                self.queue.put(None)
            for thread in self.threads:
                thread.join()


def _flush_wal() -> None:
    """A synchronous commit of a transaction with an id waits for the WAL up to it, and so for every batch
    committed (asynchronously) before it."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = on")
        cursor.execute("SELECT pg_current_xact_id()")


_summary_lock = threading.Lock()


def _create_stage() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
                line integer, event_id text, customer text, session_id text, item text,
                type smallint, value double precision, occurred_at timestamptz
            ) ON COMMIT DELETE ROWS"""
        )


def _store_batch(batch: list[tuple], summary: ImportSummary, errors: ErrorLog, create_missing_items: bool) -> None:
    """One batch in one transaction. Rows are inserted in key order, so two writers that meet on the same new
    customer or event id wait for each other instead of deadlocking."""
    with transaction.atomic(), connection.cursor() as cursor:
        # Durability comes from the writer's final synchronous commit (see _BatchWriter).
        cursor.execute("SET LOCAL synchronous_commit = off")
        raw = cursor.cursor
        with raw.copy(f"COPY {_STAGE} ({_STAGE_COLUMNS}) FROM STDIN") as copy:
            for row in batch:
                copy.write_row(row)
        if create_missing_items:
            # A placeholder item (title = id) the catalog import or the API can fill in later.
            cursor.execute(
                f"""INSERT INTO catalog_item (external_id, title, description, in_stock, active, tags, attributes,
                                              created_at, updated_at)
                    SELECT item, item, '', true, true, '{{}}', '{{}}', min(occurred_at), now()
                    FROM {_STAGE} GROUP BY item ORDER BY item
                    ON CONFLICT (external_id) DO NOTHING"""
            )
        cursor.execute(
            f"""SELECT s.line, s.item FROM {_STAGE} s
                LEFT JOIN catalog_item i ON i.external_id = s.item
                WHERE i.id IS NULL ORDER BY s.line"""
        )
        missing = cursor.fetchall()
        for line, item in missing:
            errors.add(line, f"item_id: unknown item {item!r} (import the items first or use --create-missing-items)")
        # Customers this batch would create: an erased id among them is refused (catalog.erasure), its rows too.
        cursor.execute(
            f"""SELECT DISTINCT s.customer FROM {_STAGE} s
                LEFT JOIN catalog_customer c ON c.external_id = s.customer
                WHERE s.customer <> '' AND c.id IS NULL"""
        )
        erased = sorted(erasure.erased_ids(row[0] for row in cursor.fetchall()))
        refused = 0
        if erased:
            cursor.execute(
                f"""DELETE FROM {_STAGE} s USING catalog_item i
                    WHERE i.external_id = s.item AND s.customer = ANY(%s::text[]) RETURNING s.line""",
                [erased],
            )
            lines = sorted(line for (line,) in cursor.fetchall())
            refused = len(lines)
            for line in lines:
                errors.add(line, "customer_id: this customer id was erased; its events are not imported")
        cursor.execute(
            f"""INSERT INTO catalog_customer (external_id, created_at, attributes, personalisation_opt_out)
                SELECT s.customer, min(s.occurred_at), '{{}}', false
                FROM {_STAGE} s JOIN catalog_item i ON i.external_id = s.item
                WHERE s.customer <> ''
                GROUP BY s.customer ORDER BY s.customer
                ON CONFLICT (external_id) DO NOTHING"""
        )
        cursor.execute(
            f"""INSERT INTO events_interaction
                    (event_id, customer_id, session_id, item_id, type, value, occurred_at, received_at, request_id)
                SELECT s.event_id, c.id, coalesce(s.session_id, ''), i.id, s.type, s.value, s.occurred_at, now(), ''
                FROM {_STAGE} s
                JOIN catalog_item i ON i.external_id = s.item
                LEFT JOIN catalog_customer c ON c.external_id = s.customer
                ORDER BY s.event_id
                ON CONFLICT (event_id) DO NOTHING"""
        )
        stored = cursor.rowcount
    with _summary_lock:
        summary.stored += stored
        summary.duplicates += len(batch) - len(missing) - refused - stored


# --- Real-time ingestion --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    """What became of a request's events: ``accepted + duplicates + len(rejected)`` is the number sent."""

    accepted: int  # newly stored
    duplicates: int  # already stored (same event_id), or repeated within the request: acknowledged, stored once
    rejected: tuple[Rejection, ...]  # by index, with the reasons; nothing of them is stored


def event_ingest_batch(*, events: Sequence[Any], received_at: datetime | None = None) -> IngestResult:
    """Validate raw API events, store the valid ones durably, then add the new ones to the online state.

    The Postgres transaction commits before Redis is touched, so an event reported as accepted is never lost;
    call this outside any transaction of your own (inside one, "accepted" would only mean "savepoint released").
    A Redis failure after the commit is logged and counted, not raised: ``rebuild_online_state`` repairs it.
    """
    now = received_at or utcnow()
    parsed, rejected = parse_events(list(events), now=now)
    stored, unknown, duplicates = _events_store(parsed, received_at=now)
    rejected.extend(unknown)
    rejected.sort(key=lambda rejection: rejection.index)

    if rejected:
        EVENTS_REJECTED.inc(len(rejected))
    for type_, count in Counter(row.event.type for row in stored).items():
        EVENTS_INGESTED.labels(type=Interaction.Type(type_).label).inc(count)
    if stored:
        _online_apply([row.online() for row in stored], now=now.timestamp())
    return IngestResult(accepted=len(stored), duplicates=duplicates, rejected=tuple(rejected))


@dataclass(frozen=True)
class _StoredEvent:
    event: ParsedEvent
    interaction_pk: int
    item_pk: int
    category_pk: int | None

    def online(self) -> online.OnlineEvent:
        event = self.event
        return online.OnlineEvent(
            owner=keys.owner_for(customer_id=event.customer_id, session_id=event.session_id),
            interaction_pk=self.interaction_pk,
            item_pk=self.item_pk,
            category_pk=self.category_pk,
            type=event.type,
            value=event.value,
            ts=event.occurred_at.timestamp(),
        )


def _events_store(
    parsed: list[ParsedEvent], *, received_at: datetime
) -> tuple[list[_StoredEvent], list[Rejection], int]:
    """One transaction: bulk item lookup, bulk customer upsert, bulk insert ``ON CONFLICT (event_id) DO NOTHING``.

    Returns the newly stored events, the rejections for unknown items and the number of duplicates.
    """
    if not parsed:
        return [], [], 0
    unknown: list[Rejection] = []
    duplicates = 0
    # Raw psycopg errors become Django's, so the API's handler answers an unreachable database with 503.
    with connection.wrap_database_errors, transaction.atomic(), _binary_cursor() as cursor:
        cursor.execute(
            "SELECT external_id, id, category_id FROM catalog_item WHERE external_id = ANY(%b::text[])",
            [sorted({event.item_id for event in parsed})],
        )
        items: dict[str, tuple[int, int | None]] = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
        valid: dict[str, ParsedEvent] = {}
        for event in parsed:
            if event.item_id not in items:
                unknown.append(Rejection(event.index, {"item_id": [f"Unknown item_id {event.item_id!r}."]}))
            elif event.event_id in valid:
                duplicates += 1
            else:
                valid[event.event_id] = event
        if not valid:
            return [], unknown, duplicates
        customers = _customer_pks(cursor, {event.customer_id for event in valid.values()}, created_at=received_at)
        for event_id, event in list(valid.items()):
            if event.customer_id and event.customer_id not in customers:
                # An erased id (catalog.erasure): its events are refused, so the erasure sticks.
                unknown.append(Rejection(event.index, {"customer_id": [ERASED_CUSTOMER_MESSAGE]}))
                del valid[event_id]
        if not valid:
            return [], unknown, duplicates
        # Inserted in event_id order: two concurrent requests carrying the same events then wait on each other's
        # unique-index entries in the same order, instead of deadlocking.
        batch = [valid[event_id] for event_id in sorted(valid)]
        cursor.execute(
            """INSERT INTO events_interaction
                   (event_id, customer_id, session_id, item_id, type, value, occurred_at, received_at, request_id)
               SELECT e, c, s, i, t, v, o, %b, r
               FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::bigint[], %b::smallint[], %b::float8[],
                           %b::timestamptz[], %b::text[]) AS u(e, c, s, i, t, v, o, r)
               ON CONFLICT (event_id) DO NOTHING
               RETURNING event_id, id""",
            [
                received_at,
                [event.event_id for event in batch],
                [customers[event.customer_id] if event.customer_id else None for event in batch],
                [event.session_id for event in batch],
                [items[event.item_id][0] for event in batch],
                [event.type for event in batch],
                [event.value for event in batch],
                [event.occurred_at for event in batch],
                [event.request_id for event in batch],
            ],
        )
        inserted: dict[str, int] = dict(cursor.fetchall())
    duplicates += len(batch) - len(inserted)
    stored = [
        _StoredEvent(event, inserted[event.event_id], *items[event.item_id])
        for event in sorted(batch, key=lambda event: event.index)
        if event.event_id in inserted
    ]
    return stored, unknown, duplicates


def _binary_cursor() -> psycopg.Cursor[Any]:
    """A server-side-binding psycopg cursor on Django's connection (and so inside its transaction).

    Django's cursors bind parameters client-side, as SQL text; the arrays of a 500-event batch then cost more to
    quote than to insert. Sent in binary (``%b``) they cost a third.
    """
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


ERASED_CUSTOMER_MESSAGE = (
    "This customer id was erased; events naming it are not stored. Send the event without customer_id, or create "
    "the customer again (PUT /v1/customers/<id>) first."
)


class CustomerErased(Exception):
    """The customer id is on the erasure suppression list and has no customer row (see catalog.erasure)."""

    field = "customer_id"
    message = ERASED_CUSTOMER_MESSAGE


def _customer_pks(cursor: psycopg.Cursor[Any], external_ids: set[str], *, created_at: datetime) -> dict[str, int]:
    """Primary keys of the customers, creating the unknown ones, except erased ids (absent from the result).

    Selects first: almost every event names a known customer, and ``INSERT ... ON CONFLICT DO NOTHING`` on a
    known one would still burn a sequence value and a speculative index probe. Missing ids are inserted in sorted
    order (concurrent requests lock them in one order) and those another request created meanwhile are selected
    again, by a new statement that sees its commit.
    """
    external_ids.discard("")
    if not external_ids:
        return {}
    wanted = sorted(external_ids)
    select = "SELECT external_id, id FROM catalog_customer WHERE external_id = ANY(%b::text[])"
    cursor.execute(select, [wanted])
    found: dict[str, int] = dict(cursor.fetchall())
    missing = [external_id for external_id in wanted if external_id not in found]
    if missing:
        erased = erasure.erased_ids(missing)
        missing = [external_id for external_id in missing if external_id not in erased]
    if missing:
        cursor.execute(
            """INSERT INTO catalog_customer (external_id, created_at, attributes, personalisation_opt_out)
               SELECT x, %b, '{}', false FROM unnest(%b::text[]) AS x
               ON CONFLICT (external_id) DO NOTHING
               RETURNING external_id, id""",
            [created_at, missing],
        )
        found.update(cursor.fetchall())
        raced = [external_id for external_id in missing if external_id not in found]
        if raced:
            cursor.execute(select, [raced])
            found.update(cursor.fetchall())
    return found


def _online_apply(events: list[online.OnlineEvent], *, now: float) -> None:
    try:
        online.apply_events(events, now=now)
    except redis.RedisError:
        # The events are committed: answering an error would make the client resend what is already stored.
        ONLINE_STATE_ERRORS.inc()
        logger.exception("online_state_update_failed", extra={"events": len(events)})


@dataclass(frozen=True)
class SessionMergeResult:
    session_id: str
    customer_id: str
    interactions_merged: int  # anonymous interactions of the session that now carry the customer


def session_merge(*, session_id: str, customer_id: str) -> SessionMergeResult:
    """Give an anonymous session's interactions to the customer who just logged in, in Postgres and in Redis.

    Ids are validated by the caller. Raises :class:`CustomerErased` for an erased customer id (without a row).
    Idempotent: the UPDATE only touches interactions without a customer and the Redis merge deletes what it moved;
    a retry after a Redis failure still merges the online state.
    """
    with connection.wrap_database_errors, transaction.atomic(), _binary_cursor() as cursor:
        customer_pk = _customer_pks(cursor, {customer_id}, created_at=utcnow()).get(customer_id)
        if customer_pk is None:
            raise CustomerErased(customer_id)
        merged = Interaction.objects.filter(session_id=session_id, customer__isnull=True).update(
            customer_id=customer_pk
        )
    session_owner = keys.owner_for(customer_id="", session_id=session_id)
    try:
        online.merge_owner(source=session_owner, target=keys.customer_owner(customer_id))
    except redis.RedisError:
        ONLINE_STATE_ERRORS.inc()
        logger.exception("online_state_merge_failed", extra={"session_id": session_id})
    logger.info("session_merged", extra={"session_id": session_id, "merged": merged})
    return SessionMergeResult(session_id=session_id, customer_id=customer_id, interactions_merged=merged)


# --- Online state: fold and rebuild ---------------------------------------------------------------------------


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
    """Another rebuild holds the lock."""


@dataclass
class RebuildSummary:
    keys_cleared: int = 0
    owners: int = 0
    history_entries: int = 0
    affinity_pairs: int = 0
    dismissed_items: int = 0
    counter_cells: int = 0
    items_folded: int = 0
    seconds: float = 0.0

    def table(self) -> str:
        rows = [
            ("keys cleared", self.keys_cleared),
            ("owners (customers + sessions)", self.owners),
            ("history entries", self.history_entries),
            ("affinity pairs", self.affinity_pairs),
            ("dismissed items", self.dismissed_items),
            ("counter cells", self.counter_cells),
            ("items folded", self.items_folded),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {count:>12,}" for name, count in rows]
        lines.append(f"{'seconds':<{width}}  {self.seconds:>12,.1f}")
        return "\n".join(lines)


REBUILD_LOCK_SECONDS = 4 * 3600
_REBUILD_CHUNK = 5000


def online_state_rebuild(
    *, history_length: int = online.HISTORY_LENGTH, on_progress: Callable[[str, int], None] | None = None
) -> RebuildSummary:
    """Rebuild the whole online state from Postgres, e.g. after Redis lost its data.

    Clears our rebuildable keys (SCAN by prefix), then streams from one REPEATABLE READ snapshot: each owner's
    latest ``history_length`` events, every owner's category affinities, the hourly item counters of the last
    eight days; bumps every owner's cache version and folds the item features. Idempotent; one at a time (a Redis
    lock). Events ingested while it runs may be counted twice in counters and affinities until the next rebuild;
    histories are exact (re-adding an event is a no-op). ``on_progress(stage, rows)`` reports rows as they stream.
    """
    started = time.perf_counter()
    lock = redis_client.get().lock(keys.REBUILD_LOCK, timeout=REBUILD_LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        raise RebuildInProgress("another rebuild_online_state is running")
    summary = RebuildSummary()
    progress = on_progress or (lambda stage, rows: None)
    try:
        online.mark_incomplete(request_ttl_seconds=REBUILD_REQUEST_SECONDS)
        summary.keys_cleared = online.clear_rebuildable()
        snapshot = not connection.in_atomic_block
        with transaction.atomic():
            if snapshot:
                # One snapshot for the three reads, so history, affinities and counters describe the same events.
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            owners = _rebuild_histories(summary, history_length, progress)
            owners |= _rebuild_dismissed(summary, progress)
            _rebuild_affinities(summary, progress)
            _rebuild_counters(summary, progress)
        owner_list = sorted(owners)
        for start in range(0, len(owner_list), _REBUILD_CHUNK):
            online.bump_cache_versions(owner_list[start : start + _REBUILD_CHUNK])
        summary.owners = len(owners)
        summary.items_folded = item_features_fold().items
        online.mark_complete(now=time.time())
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            logger.warning("online_state_rebuild_lock_expired")
    summary.seconds = time.perf_counter() - started
    logger.info("online_state_rebuilt", extra={"owners": summary.owners, "seconds": round(summary.seconds, 1)})
    return summary


# Long enough for a queued rebuild to start and finish on a large shop; a rebuild that ends clears it sooner.
REBUILD_REQUEST_SECONDS = 900


def online_state_rebuild_request() -> bool:
    """Queue ``rebuild_online_state`` because Redis lost the online state (see ``keys.ONLINE_STATE_COMPLETE``);
    True if this call queued it. Once for any number of callers and processes: the first claims
    ``keys.REBUILD_REQUESTED`` (NX); it is released when a rebuild ends, or expires after
    ``REBUILD_REQUEST_SECONDS`` so a rebuild that never ran (no worker, a crash) is asked for again. Never raises:
    callers are serving requests, which answer from Postgres meanwhile."""
    from events.tasks import rebuild_online_state  # the tasks module imports this one

    try:
        if not online.claim_rebuild_request(ttl_seconds=REBUILD_REQUEST_SECONDS):
            return False
        rebuild_online_state.delay()
    except (redis.RedisError, kombu.exceptions.OperationalError):
        # Redis (the broker too) unreachable: let the next request try again.
        logger.warning("online_state_rebuild_request_failed", exc_info=True)
        with contextlib.suppress(redis.RedisError):
            redis_client.get().delete(keys.REBUILD_REQUESTED)
        return False
    logger.warning("online_state_rebuild_requested")
    return True


def _rebuild_histories(summary: RebuildSummary, history_length: int, progress: Callable[[str, int], None]) -> set[str]:
    owners: set[str] = set()
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            f"""SELECT {keys.owner_sql("c.external_id", "t.session_id")}, t.item_id, t.type, t.occurred_at, t.id
               FROM (
                   SELECT i.id, i.customer_id, i.session_id, i.item_id, i.type, i.occurred_at,
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
            for owner, item_pk, type_, occurred_at, interaction_pk in rows:
                member = online.history_member(item_pk=item_pk, type_=type_, interaction_pk=interaction_pk)
                histories[owner][member] = occurred_at.timestamp()
            online.write_histories(histories)
            owners.update(histories)
            summary.history_entries += len(rows)
            progress("history", len(rows))
    return owners


def _rebuild_dismissed(summary: RebuildSummary, progress: Callable[[str, int], None]) -> set[str]:
    """Every owner's dismissed items (the latest dismissal of each), as ingestion keeps them."""
    owners: set[str] = set()
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            f"""SELECT {keys.owner_sql("c.external_id", "i.session_id")}, i.item_id,
                       max(extract(epoch FROM i.occurred_at))::float8
                FROM events_interaction i
                LEFT JOIN catalog_customer c ON c.id = i.customer_id
                WHERE i.type = %s
                GROUP BY 1, 2""",
            [DISMISS],
        )
        while rows := cursor.fetchmany(_REBUILD_CHUNK):
            dismissed: dict[str, dict[int, float]] = defaultdict(dict)
            for owner, item_pk, ts in rows:
                dismissed[owner][item_pk] = ts
            online.write_dismissed(dismissed)
            owners.update(dismissed)
            summary.dismissed_items += len(rows)
            progress("dismissed", len(rows))
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
                           * power(2::float8, (extract(epoch FROM i.occurred_at)::float8 - %s) / %s))
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
            """SELECT i.type, floor(extract(epoch FROM i.occurred_at) / 3600)::bigint, i.item_id, count(*)
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
