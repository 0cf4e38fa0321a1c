"""manage.py prune_interactions --older-than 395d: retention by whole monthly partitions."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from events import partitions

_DURATION = re.compile(r"^(\d+)([dw])$")
_TABLES = {"interactions": partitions.INTERACTIONS, "impressions": partitions.IMPRESSIONS}


def parse_cutoff(raw: str, *, now: datetime) -> datetime:
    """``<N>d`` or ``<N>w`` before ``now``, or an ISO date / date-time (UTC unless it carries an offset)."""
    raw = raw.strip()
    if match := _DURATION.match(raw):
        count, unit = int(match[1]), match[2]
        if count <= 0:
            raise ValueError("the duration must be positive")
        try:
            return now - timedelta(days=count * (7 if unit == "w" else 1))
        except OverflowError:  # further back than a date can be
            raise ValueError(f"{raw!r} reaches before the year 1") from None
    try:
        value = (
            datetime.fromisoformat(raw)
            if "T" in raw or " " in raw
            else datetime.combine(date.fromisoformat(raw), datetime.min.time())
        )
    except ValueError:
        raise ValueError(f"{raw!r} is neither a duration (e.g. 395d, 56w) nor an ISO date (2025-01-01)") from None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset, or year 9999 with a negative one
        edge = "before the year 1" if value.year < 5000 else "past the year 9999"
        raise ValueError(f"{raw!r} reaches {edge}") from None
    if value > now:
        raise ValueError(f"{raw!r} is in the future: that would delete current data")
    return value


class Command(BaseCommand):
    help = (
        "Delete interactions (and, with --tables, impressions) older than a duration or date: the monthly "
        "partitions wholly before it are detached and dropped (no row-by-row delete), then the older rows of the "
        "boundary month and of the default partition are deleted. --dry-run shows the plan."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than", required=True, metavar="DURATION|DATE",
            help="e.g. 395d (days), 56w (weeks), or a date 2025-01-01 (UTC): rows before it are deleted",
        )  # fmt: skip
        parser.add_argument(
            "--tables", default="interactions",
            help="comma-separated: interactions, impressions (default: interactions)",
        )  # fmt: skip
        parser.add_argument("--dry-run", action="store_true", help="print what would be dropped, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            cutoff = parse_cutoff(options["older_than"], now=datetime.now(UTC))
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from exc
        names = [name.strip() for name in options["tables"].split(",") if name.strip()]
        unknown = sorted(set(names) - set(_TABLES))
        if unknown or not names:
            raise CommandError(f"--tables: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(_TABLES)}")
        for name in names:
            spec = _TABLES[name]
            try:
                if not partitions.is_partitioned(spec=spec):
                    raise CommandError(f"{spec.table} is not partitioned: run `manage.py migrate` first")
                if options["dry_run"]:
                    plan = partitions.prune_plan(spec=spec, cutoff=cutoff)
                    self.stdout.write(f"{name}: rows before {cutoff.isoformat()} would be deleted")
                    for partition in plan.drop:
                        self.stdout.write(f"  would drop {partition}")
                    for partition in [plan.boundary, partitions.default_name(spec)]:
                        if partition:
                            self.stdout.write(f"  would delete the older rows of {partition}")
                    continue
                result = partitions.partitions_prune(spec=spec, cutoff=cutoff, progress=self._progress(name))
            except DatabaseError as exc:
                raise CommandError(f"{name}: the database refused: {exc}") from exc
            self.stdout.write(
                self.style.SUCCESS(
                    f"{name}: dropped {len(result.dropped)} partitions, deleted {result.rows_deleted} rows "
                    f"before {cutoff.isoformat()}"
                )
            )

    def _progress(self, table: str) -> Callable[[str], None]:
        return lambda message: self.stdout.write(f"{table}: {message}")
