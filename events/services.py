"""Event use cases: bulk import of interactions from CSV."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection, transaction

from events.importers import FORMATS, SkipRow
from events.parsing import InvalidEvent, utcnow
from recsys.csvimport import CsvSource, ErrorLog, ImportAborted, ImportSummary, RowError

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
        with CsvSource(path, required=required, optional=optional) as source:
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
                    writer.put(batch, last=False)
                    batch = []
                    if on_progress:
                        on_progress(source.position())
            # Always send a last (synchronous) batch, even an empty one, so every earlier commit is flushed.
            writer.put(batch, last=True)
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


class _BatchWriter(threading.Thread):
    """Writes batches on its own connection while the caller parses the next one.

    Parsing is Python on one core and the insert is Postgres on the other, so overlapping them nearly halves an
    import. At most two batches wait in the queue, which bounds memory. The first error stops the writer and is
    raised again in the caller by ``put``/``finish``.
    """

    def __init__(self, summary: ImportSummary, errors: ErrorLog, create_missing_items: bool) -> None:
        super().__init__(name="import-writer", daemon=True)
        self.summary = summary
        self.errors = errors
        self.create_missing_items = create_missing_items
        self.queue: queue.Queue[tuple[list[tuple], bool] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            _create_stage()
            while (job := self.queue.get()) is not None:
                if self.error is None:
                    _store_batch(job[0], self.summary, self.errors, self.create_missing_items, last=job[1])
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self.error = exc
            while self.queue.get() is not None:  # drain so the caller never blocks on a full queue
                pass
        finally:
            connection.close()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, batch: list[tuple], *, last: bool) -> None:
        self._raise()
        self.queue.put((batch, last))

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        self._raise()

    def abandon(self) -> None:
        if self.is_alive():
            self.error = self.error or ImportAborted("import interrupted")
            self.queue.put(None)
            self.join()


def _create_stage() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
                line integer, event_id text, customer text, session_id text, item text,
                type smallint, value double precision, occurred_at timestamptz
            ) ON COMMIT DELETE ROWS"""
        )


def _store_batch(
    batch: list[tuple], summary: ImportSummary, errors: ErrorLog, create_missing_items: bool, *, last: bool
) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        if not last:
            # Batches before the last commit without waiting for the WAL flush; the last batch's synchronous
            # commit flushes everything before it too, so the summary is only printed once all of it is durable.
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
                    FROM {_STAGE} GROUP BY item
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
        cursor.execute(
            f"""INSERT INTO catalog_customer (external_id, created_at, attributes, personalisation_opt_out)
                SELECT s.customer, min(s.occurred_at), '{{}}', false
                FROM {_STAGE} s JOIN catalog_item i ON i.external_id = s.item
                WHERE s.customer <> ''
                GROUP BY s.customer
                ON CONFLICT (external_id) DO NOTHING"""
        )
        cursor.execute(
            f"""INSERT INTO events_interaction
                    (event_id, customer_id, session_id, item_id, type, value, occurred_at, received_at, request_id)
                SELECT s.event_id, c.id, coalesce(s.session_id, ''), i.id, s.type, s.value, s.occurred_at, now(), ''
                FROM {_STAGE} s
                JOIN catalog_item i ON i.external_id = s.item
                LEFT JOIN catalog_customer c ON c.external_id = s.customer
                ON CONFLICT (event_id) DO NOTHING"""
        )
        stored = cursor.rowcount
    summary.stored += stored
    summary.duplicates += len(batch) - len(missing) - stored
