"""manage.py import_items FILE.csv: bulk upsert of items."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from catalog.importing import items_import
from kernel.management.importing import (
    DECIMAL_COMMA_HELP,
    ENCODING_HELP,
    encoding_checked,
    rejected_rows_fail,
    run_import,
)


class Command(BaseCommand):
    help = (
        "Import items from CSV (.csv or .csv.gz): item_id,title,description,category,brand,price,in_stock,"
        "created_at,tags (item_id and title required; tags separated by |). New items are stored, changed ones "
        "updated."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path")
        parser.add_argument("--max-errors", type=int, default=None, help="stop after this many bad rows")
        parser.add_argument("--encoding", default=None, help=ENCODING_HELP)
        parser.add_argument("--decimal-comma", action="store_true", help=DECIMAL_COMMA_HELP)
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        summary = run_import(
            self, items_import, options["path"], max_errors=options["max_errors"], quiet=options["quiet"],
            encoding=encoding_checked(options["encoding"]), decimal_comma=options["decimal_comma"],
        )  # fmt: skip
        rejected_rows_fail(summary)
