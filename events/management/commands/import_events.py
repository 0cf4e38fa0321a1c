"""manage.py import_events FILE.csv: bulk, idempotent import of interactions, then the online state brought up to
date so serving sees the imported histories at once."""

from __future__ import annotations

import contextlib
from typing import Any

import redis
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from events import keys, partitions
from events.importers import FORMATS
from events.services import interactions_import
from kernel import redis_client
from kernel.csvimport import ImportSummary
from kernel.management.importing import (
    DECIMAL_COMMA_HELP,
    ENCODING_HELP,
    ImportStopped,
    encoding_checked,
    rejected_rows_fail,
    run_import,
)


class Command(BaseCommand):
    help = (
        "Import interactions from CSV (.csv or .csv.gz). Generic columns: "
        "event_id,customer_id,item_id,type,value,occurred_at,session_id (customer_id, item_id, type required). "
        "Re-running stores nothing twice. When rows were stored, the online state (histories, affinities, "
        "counters in Redis) is rebuilt from Postgres at the end, so serving personalises from the imported history "
        "right away (--no-rebuild to skip, e.g. between several imports)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path")
        parser.add_argument("--format", choices=sorted(FORMATS), default="generic", dest="fmt")
        parser.add_argument(
            "--create-missing-items", action="store_true",
            help="create placeholder items for unknown item ids instead of rejecting the rows",
        )  # fmt: skip
        parser.add_argument("--max-errors", type=int, default=None, help="stop after this many bad rows")
        parser.add_argument("--batch-size", type=int, default=50_000)
        parser.add_argument(
            "--no-rebuild", action="store_true",
            help="do not rebuild the online state afterwards (run manage.py rebuild_online_state yourself)",
        )  # fmt: skip
        parser.add_argument("--encoding", default=None, help=ENCODING_HELP)
        parser.add_argument("--decimal-comma", action="store_true", help=DECIMAL_COMMA_HELP)
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        # Stored events reach serving only through the rebuild after them: an import killed in between is marked, so
        # its re-run (which stores nothing new) still rebuilds (found by a sixth tester, 5 December).
        encoding = encoding_checked(options["encoding"])  # before the rebuild mark: a typo changes nothing
        pending = self._pending()
        if not options["no_rebuild"]:
            self._mark_pending()
        try:
            summary = run_import(
                self, interactions_import, options["path"], fmt=options["fmt"],
                create_missing_items=options["create_missing_items"], max_errors=options["max_errors"],
                batch_size=options["batch_size"], quiet=options["quiet"], encoding=encoding,
                decimal_comma=options["decimal_comma"],
            )  # fmt: skip
        except ImportStopped as stopped:
            stored = stopped.summary.stored if stopped.summary is not None else 0
            if stopped.interrupted:
                # Ctrl-C or SIGTERM: stop now, no rebuild of minutes first. The mark stays when events were stored,
                # so the re-run the message asks for brings serving up to date even if it stores nothing new.
                if stored and not options["no_rebuild"]:
                    self.stderr.write("the online state was not brought up to date: the re-run does it")
                elif not pending:
                    self._clear_pending()
                raise
            # Batches stored before the stop stay (a re-run skips them): serving must see them all the same.
            if stored and not options["no_rebuild"]:
                self.stderr.write(f"{stored:,} events were stored before the import stopped")
                self._bring_serving_up_to_date(options)
            elif not pending:
                self._clear_pending()
            raise
        except CommandError:  # before anything was read (no such file): nothing for a rebuild to bring up
            if not pending:
                self._clear_pending()
            raise
        self._after(summary, options, pending=pending)
        rejected_rows_fail(summary)  # after serving is brought up to date with the rows that were stored

    def _after(self, summary: ImportSummary, options: dict[str, Any], *, pending: bool) -> None:
        if (summary.stored or pending) and not options["no_rebuild"]:
            if not summary.stored:
                self.stderr.write("an earlier import stopped before bringing the online state up to date")
            self._bring_serving_up_to_date(options)
            return
        if not options["no_rebuild"]:
            self._clear_pending()  # this run's own mark: nothing stored, nothing left over
        partitions.partitions_split_default(tables=(partitions.INTERACTIONS,))
        if summary.stored:
            self.stderr.write("online state not rebuilt (--no-rebuild): run manage.py rebuild_online_state")

    def _bring_serving_up_to_date(self, options: dict[str, Any]) -> None:
        # Older months landed in the default partition: give each its own (logged), so retention can drop it whole.
        partitions.partitions_split_default(tables=(partitions.INTERACTIONS,))
        # Imported events reach Postgres only; without this step serving would answer from an online state that
        # knows none of them (unpersonalised lists) until a rebuild ran.
        # Its progress and summary go to stderr: stdout stays the import's summary table.
        self.stderr.write("Bringing the online state up to date with the imported events (rebuild_online_state)")
        try:
            call_command(
                "rebuild_online_state", quiet=options["quiet"], stdout=self.stderr._out, stderr=self.stderr._out
            )
            self._clear_pending()
        except (CommandError, redis.RedisError) as exc:
            raise CommandError(
                f"the events were imported, but the online state was not rebuilt ({exc}); "
                "run manage.py rebuild_online_state"
            ) from exc

    @staticmethod
    def _pending() -> bool:
        try:
            return bool(redis_client.get().exists(keys.IMPORT_REBUILD_PENDING))
        except redis.RedisError:
            return False

    @staticmethod
    def _mark_pending() -> None:
        with contextlib.suppress(redis.RedisError):  # without Redis the rebuild fails loudly anyway
            redis_client.get().set(keys.IMPORT_REBUILD_PENDING, "1", ex=7 * 86_400)

    @staticmethod
    def _clear_pending() -> None:
        with contextlib.suppress(redis.RedisError):
            redis_client.get().delete(keys.IMPORT_REBUILD_PENDING)
