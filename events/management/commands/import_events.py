"""manage.py import_events FILE.csv: bulk, idempotent import of interactions."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from events.importers import FORMATS
from events.services import interactions_import
from kernel.management.importing import run_import


class Command(BaseCommand):
    help = (
        "Import interactions from CSV (.csv or .csv.gz). Generic columns: "
        "event_id,customer_id,item_id,type,value,occurred_at,session_id (customer_id, item_id, type required). "
        "Re-running stores nothing twice."
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
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        run_import(
            self, interactions_import, options["path"], fmt=options["fmt"],
            create_missing_items=options["create_missing_items"], max_errors=options["max_errors"],
            batch_size=options["batch_size"], quiet=options["quiet"],
        )  # fmt: skip
