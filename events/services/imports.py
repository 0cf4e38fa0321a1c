"""Bulk import of interactions from CSV: staged through COPY, items and customers created as needed."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.db import connection, transaction

from catalog import selectors as catalog_selectors
from catalog.services import customer_pks_get_or_create
from events.importers import FORMATS, SkipRow
from events.parsing import InvalidEvent, utcnow
from kernel.csvimport import CsvSource, ErrorLog, ImportAborted, ImportSummary, RowError, gc_paused

logger = logging.getLogger(__name__)

_STAGE = "import_event_stage"
_STAGE_COLUMNS = "line, event_id, customer, session_id, item, type, value, occurred_at"
# The interactions table is partitioned by month on occurred_at, so the database's idempotency key is
# (event_id, occurred_at). An event_id stored at another time within this window is also a duplicate: a client's
# retry that omitted occurred_at (which then defaults to the arrival time). Bounded, so a batch probes only the
# partitions around its own times, not every month kept.
RETRY_WINDOW = timedelta(days=7)
_RETRY_WINDOW_SQL = "interval '7 days'"

# That check is a read, so two writers storing one event_id at once (a client's retry beside the original, two
# overlapping imports) would both find nothing and both insert when the times differ. Writers of one event_id take
# turns instead: each transaction takes a transaction-level advisory lock on the buckets of its event ids (a hash
# of the id into EVENT_ID_BUCKETS), in ascending order, before it checks. Few buckets bound the locks a batch
# holds (Postgres' lock table is shared and bounded); a single event, the usual request, takes one.
EVENT_ID_BUCKETS = 64
EVENT_ID_LOCK_CLASS = 0x45564944  # "EVID": the first key of the two-key advisory locks, apart from other users'


# A condition that takes the turn: true once every lock is held. Parameters: the lock class, the sorted buckets.
EVENT_IDS_LOCKED_SQL = "(SELECT count(pg_advisory_xact_lock(%s::int, b)) FROM unnest(%s::int[]) AS b) >= 0"


def event_id_buckets(event_ids: Iterable[str]) -> list[int]:
    """The lock buckets of ``event_ids``, ascending (the order every writer takes them in)."""
    return sorted({int.from_bytes(hashlib.blake2b(e.encode(), digest_size=4).digest()) % EVENT_ID_BUCKETS
                   for e in event_ids})  # fmt: skip


def event_ids_lock(cursor: Any, event_ids: Iterable[str]) -> None:
    """Take this transaction's turn for ``event_ids`` (see above); ``cursor`` is a psycopg or Django cursor."""
    buckets = event_id_buckets(event_ids)
    if buckets:
        cursor.execute(f"SELECT {EVENT_IDS_LOCKED_SQL}", [EVENT_ID_LOCK_CLASS, buckets])


def interactions_import(
    *,
    path: str | Path,
    fmt: str = "generic",
    create_missing_items: bool = False,
    max_errors: int | None = None,
    batch_size: int = 50_000,
    on_progress: Callable[[int], None] | None = None,
    on_error: Callable[[RowError], None] | None = None,
    summary: ImportSummary | None = None,
    encoding: str | None = None,
    decimal_comma: bool = False,
) -> ImportSummary:
    """Stream a CSV of interactions into Postgres: COPY each batch into a staging table, then one set-based insert
    with ``ON CONFLICT (event_id, occurred_at) DO NOTHING`` (and no event_id stored within ``RETRY_WINDOW``), so a
    re-run stores nothing twice.

    Each batch commits on its own: an abort (``max_errors``) keeps what was stored and a re-run skips it. Bad rows
    never reach the table. ``on_progress`` gets the bytes read so far.
    """
    required, optional, make_adapter = FORMATS[fmt]
    # The caller may pass the summary in, to read what was stored when the import is interrupted (Ctrl-C).
    summary = ImportSummary(path=str(path)) if summary is None else summary
    errors = ErrorLog(summary, max_errors, on_error)
    started = time.perf_counter()
    now = utcnow()  # an event without occurred_at happened at the import (the writers lock those ids: above)
    writer = _BatchWriter(summary, errors, create_missing_items, defaulted_at=now)
    writer.start()
    try:
        with gc_paused(), CsvSource(path, required=required, optional=optional, encoding=encoding) as source:
            adapt = make_adapter(source.index, now, decimal_comma=decimal_comma)
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
    except ImportAborted as exc:
        exc.summary = summary  # what was stored before the abort stays: the command still brings serving up to date
        raise
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
        self,
        summary: ImportSummary,
        errors: ErrorLog,
        create_missing_items: bool,
        *,
        defaulted_at: datetime,
        writers: int = 2,
    ) -> None:
        self.summary = summary
        self.defaulted_at = defaulted_at
        self.errors = errors
        self.create_missing_items = create_missing_items
        self.inline = connection.in_atomic_block
        if self.inline:
            _create_stage()
        self.queue: queue.Queue[tuple[int, list[tuple]] | None] = queue.Queue(maxsize=2 * writers)
        self.error: BaseException | None = None
        self.turns = _CustomerTurns()
        self.sent = 0
        self.threads = [
            threading.Thread(target=self._run, name=f"import-writer-{n}", daemon=True) for n in range(writers)
        ]

    def _run(self) -> None:
        try:
            _create_stage()
            while (item := self.queue.get()) is not None:
                if self.error is None:
                    index, batch = item
                    with self.turns.turn(index):
                        _create_customers(batch, self.create_missing_items)
                    _store_batch(batch, self.summary, self.errors, self.create_missing_items, self.defaulted_at)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            # The first error is the cause; a writer woken by it from its turn only says "interrupted".
            self.error = self.error or exc
            self.turns.fail()
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
            _store_batch(batch, self.summary, self.errors, self.create_missing_items, self.defaulted_at)
            return
        self._raise()
        self.queue.put((self.sent, batch))
        self.sent += 1

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
            self.turns.fail()
            for _ in self.threads:
                self.queue.put(None)
            for thread in self.threads:
                thread.join()


class _CustomerTurns:
    """The writers create each batch's new customers one batch at a time, in file order (a short transaction of its
    own before the batch's), so a fresh import of the same file numbers its customers the same way every time: the
    training's validation draws, samples and folds follow that numbering, and two imports of one file would
    otherwise train differently (customers numbered in whichever order the two writers committed)."""

    def __init__(self) -> None:
        self._next = 0
        self._failed = False
        self._changed = threading.Condition()

    @contextmanager
    def turn(self, index: int) -> Iterator[None]:
        with self._changed:
            while self._next != index and not self._failed:
                self._changed.wait()
            if self._failed:
                raise ImportAborted("import interrupted")
        try:
            yield
        except BaseException:
            self.fail()
            raise
        with self._changed:
            self._next += 1
            self._changed.notify_all()

    def fail(self) -> None:
        """Wake every writer waiting for its turn: the import stops."""
        with self._changed:
            self._failed = True
            self._changed.notify_all()


def _create_customers(batch: list[tuple], create_missing_items: bool) -> None:
    """The batch's customers not yet stored, each with its earliest event's time, as ``_store_batch`` would create
    them: only customers with an event on a known item (any item with ``create_missing_items``), never an erased id
    (``catalog.services.customer_pks_get_or_create`` leaves those out, and ``_store_batch`` refuses their rows)."""
    items = {row[4] for row in batch}
    known = items if create_missing_items else catalog_selectors.item_pks(external_ids=items).keys()
    first: dict[str, datetime] = {}
    for row in batch:
        customer, item, occurred_at = row[2], row[4], row[7]
        if customer and item in known and (customer not in first or occurred_at < first[customer]):
            first[customer] = occurred_at
    if not first:
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = off")
        customer_pks_get_or_create(external_ids=first, created_at=first, cursor=cursor.cursor)


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


def _store_batch(
    batch: list[tuple], summary: ImportSummary, errors: ErrorLog, create_missing_items: bool, defaulted_at: datetime
) -> None:
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
        # Rows without occurred_at only (their time is the import's; see event_ids_lock): an import of dated rows,
        # the usual file, takes no turn, and its two writers never wait for each other here.
        event_ids_lock(cursor, (row[1] for row in batch if row[7] == defaulted_at))
        for line, item in missing:
            errors.add(line, f"item_id: unknown item {item!r} (import the items first or use --create-missing-items)")
        # The batch's customers, in this transaction: the known ones locked against an erasure (FOR KEY SHARE), the
        # others created, an erased id refused with its rows (catalog.services.customer_pks_get_or_create). Read
        # and created apart from this transaction, an erasure committing in between brought the customer back, or
        # failed the batch at COMMIT (found by a review, 5 December).
        cursor.execute(
            f"""SELECT s.customer, min(s.occurred_at) FROM {_STAGE} s JOIN catalog_item i ON i.external_id = s.item
                WHERE s.customer <> '' GROUP BY s.customer"""
        )
        first: dict[str, datetime] = dict(cursor.fetchall())
        found = customer_pks_get_or_create(external_ids=first, created_at=first, cursor=raw)
        erased = sorted(set(first) - set(found))
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
            f"""INSERT INTO events_interaction
                    (event_id, customer_id, session_id, item_id, type, value, occurred_at, received_at, request_id)
                -- An event_id used twice in the file: its first row (by line) is the event, the rest duplicates.
                SELECT DISTINCT ON (s.event_id)
                       s.event_id, c.id, coalesce(s.session_id, ''), i.id, s.type, s.value, s.occurred_at, now(), ''
                FROM {_STAGE} s
                JOIN catalog_item i ON i.external_id = s.item
                LEFT JOIN catalog_customer c ON c.external_id = s.customer
                WHERE NOT EXISTS (
                    SELECT 1 FROM events_interaction x
                     WHERE x.event_id = s.event_id
                       AND x.occurred_at >= (SELECT min(occurred_at) FROM {_STAGE}) - {_RETRY_WINDOW_SQL}
                       AND x.occurred_at <= (SELECT max(occurred_at) FROM {_STAGE}) + {_RETRY_WINDOW_SQL})
                ORDER BY s.event_id, s.line
                ON CONFLICT (event_id, occurred_at) DO NOTHING"""
        )
        stored = cursor.rowcount
    with _summary_lock:
        summary.stored += stored
        summary.duplicates += len(batch) - len(missing) - refused - stored
