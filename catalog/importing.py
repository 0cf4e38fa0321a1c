"""Bulk import of items from CSV: ``item_id,title,description,category,brand,price,in_stock,created_at,tags``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import connection, transaction

from catalog.models import CREATED_MAX, CREATED_MIN, MAX_DESCRIPTION, MAX_TAGS
from catalog.services import catalog_version_bump
from kernel.csvimport import CsvSource, ErrorLog, ImportSummary, RowError, decimal_comma_read, gc_paused, number_hint
from kernel.validation import id_problem, text_problem

REQUIRED = {"item_id", "title"}
OPTIONAL = {"description", "category", "brand", "price", "in_stock", "created_at", "tags"}
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}
_STAGE = "import_item_stage"


class BadItem(ValueError):
    pass


def _cell(row: list[str], index: dict[str, int], name: str) -> str:
    position = index.get(name)
    return row[position].strip() if position is not None else ""


def _check_id(value: str, field: str) -> None:
    """The one id rule of every entry point (kernel.validation), reported as ``field: reason``."""
    problem = id_problem(value)
    if problem is not None:
        raise BadItem(f"{field}: {problem}")


def parse_item_row(row: list[str], index: dict[str, int], now: datetime, *, decimal_comma: bool = False) -> tuple:
    """The stored values of one row; ``decimal_comma``: prices are written ``1.234,50``."""
    item_id = _cell(row, index, "item_id")
    title = _cell(row, index, "title")
    if not item_id:
        raise BadItem("item_id: is required")
    _check_id(item_id, "item_id")
    if not title:
        raise BadItem("title: is required")
    if len(title) > 500:
        raise BadItem("title: longer than 500 characters")
    if len(_cell(row, index, "description")) > MAX_DESCRIPTION:  # the API's limit: a PUT of what GET gave was a 400
        raise BadItem(f"description: longer than {MAX_DESCRIPTION:,} characters")
    for name, value in (("title", title), ("description", _cell(row, index, "description"))):
        problem = text_problem(value, multiline=name == "description")
        if problem is not None:
            raise BadItem(f"{name}: {problem}")
    category = _cell(row, index, "category")
    brand = _cell(row, index, "brand")
    for name, value in (("category", category), ("brand", brand)):
        if value:
            _check_id(value, name)
    raw_price = _cell(row, index, "price")
    price = None
    if raw_price:
        try:
            price = Decimal(decimal_comma_read(raw_price) if decimal_comma else raw_price)
        except InvalidOperation:
            hint = "" if decimal_comma else number_hint(raw_price)
            raise BadItem(f"price: {raw_price!r} is not a number{hint}") from None
        # Below the largest value that rounds into the column (9999999999.999 rounded past it, then overflowed).
        if not price.is_finite() or price < 0 or price >= Decimal("9999999999.995"):
            raise BadItem(f"price: {raw_price!r} must be between 0 and 10,000,000,000")
        price = price.quantize(Decimal("0.01"))
    raw_stock = _cell(row, index, "in_stock").lower()
    if raw_stock in _TRUE or raw_stock == "":
        in_stock = True
    elif raw_stock in _FALSE:
        in_stock = False
    else:
        raise BadItem(f"in_stock: {raw_stock!r} is not a boolean (true/false, 1/0, yes/no)")
    raw_created = _cell(row, index, "created_at")
    created = now
    if raw_created:
        try:
            created = datetime.fromisoformat(raw_created)
        except ValueError:
            raise BadItem(f"created_at: {raw_created!r} is not an ISO 8601 date-time") from None
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        # In UTC and within years every reader can hold (year 10000 in UTC was stored, then broke every read).
        out_of_range = BadItem(f"created_at: {raw_created!r} is not between {CREATED_MIN.year} and {CREATED_MAX.year}")
        try:
            created = created.astimezone(UTC)
        except OverflowError:
            raise out_of_range from None
        if not CREATED_MIN <= created < CREATED_MAX:
            raise out_of_range
    tags = list(dict.fromkeys(tag.strip() for tag in _cell(row, index, "tags").split("|") if tag.strip()))
    for tag in tags:
        problem = id_problem(tag)
        if problem is not None:
            raise BadItem(f"tags: a tag {'is ' if problem.startswith('longer') else ''}{problem}")
    if len(tags) > MAX_TAGS:  # the API's limit: an item imported with more could not be sent back as it reads
        raise BadItem(f"tags: {len(tags)} tags; at most {MAX_TAGS}")
    return item_id, title, _cell(row, index, "description"), category, brand, price, in_stock, created, tags


def items_import(
    *,
    path: str | Path,
    max_errors: int | None = None,
    batch_size: int = 20_000,
    on_progress: Callable[[int], None] | None = None,
    on_error: Callable[[RowError], None] | None = None,
    summary: ImportSummary | None = None,
    encoding: str | None = None,
    decimal_comma: bool = False,
) -> ImportSummary:
    """Upsert items by ``item_id``: new ones are stored, changed ones updated, identical ones counted as duplicates.

    Categories and brands named in the file are created on first sight (name = id). Each batch commits on its own.
    """
    # The caller may pass the summary in, to read what was stored when the import is interrupted (Ctrl-C).
    summary = ImportSummary(path=str(path)) if summary is None else summary
    errors = ErrorLog(summary, max_errors, on_error)
    started = time.perf_counter()
    now = datetime.now(UTC)
    try:
        with gc_paused(), CsvSource(path, required=REQUIRED, optional=OPTIONAL, encoding=encoding) as source:
            batch: dict[str, tuple] = {}
            _create_stage()
            for line, cells in source.rows(errors):
                summary.read += 1
                try:
                    parsed = parse_item_row(cells, source.index, now, decimal_comma=decimal_comma)
                except BadItem as exc:
                    errors.add(line, str(exc))
                    continue
                if parsed[0] in batch:
                    summary.duplicates += 1  # the last row for an id wins, as a re-import would make it
                batch[parsed[0]] = parsed
                if len(batch) >= batch_size:
                    _store_batch(list(batch.values()), summary, set(source.columns))
                    batch = {}
                    if on_progress:
                        on_progress(source.position())
            if batch:
                _store_batch(list(batch.values()), summary, set(source.columns))
            if on_progress:
                on_progress(source.position())
    finally:
        # Items the stored batches changed are news to serving also when the import stops part-way (--max-errors, a
        # file cut short, Ctrl-C): serving processes kept the old titles, prices and stock until another change.
        if summary.updated:
            catalog_version_bump()
    summary.seconds = time.perf_counter() - started
    return summary


def _create_stage() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
                item_id text, title text, description text, category text, brand text, price numeric(12, 2),
                in_stock boolean, created_at timestamptz, tags varchar(100)[]
            ) ON COMMIT DELETE ROWS"""
        )


# What an existing item takes from each optional column: a file without the column leaves the field as it is (a
# stock-only feed must not clear descriptions, categories and prices).
_UPDATED_BY = {
    "description": ("description",), "category": ("category_id",), "brand": ("brand_id",), "price": ("price",),
    "in_stock": ("in_stock",), "tags": ("tags",),
}  # fmt: skip


def _store_batch(batch: list[tuple], summary: ImportSummary, columns: set[str]) -> None:
    """One batch in one transaction. Categories, brands and items are inserted in key order, so two imports that meet
    on the same rows (a full feed and a stock feed at once, listing their items in other orders) wait for each other
    instead of deadlocking: in file order, one of them failed with a traceback, its batch lost (found by a
    fourteenth tester, 6 December)."""
    updated = ["title"] + [field for column, fields in _UPDATED_BY.items() if column in columns for field in fields]
    assignments = ", ".join(f"{field} = excluded.{field}" for field in updated)
    mine = ", ".join(f"i.{field}" for field in updated)
    theirs = ", ".join(f"excluded.{field}" for field in updated)
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.cursor.copy(
            f"COPY {_STAGE} (item_id, title, description, category, brand, price, in_stock, created_at, tags) "
            "FROM STDIN"
        ) as copy:
            for row in batch:
                copy.write_row(row)
        for table in ("catalog_category", "catalog_brand"):
            column = "category" if table == "catalog_category" else "brand"
            cursor.execute(
                f"""INSERT INTO {table} (external_id, name)
                    SELECT DISTINCT {column}, {column} FROM {_STAGE} WHERE {column} <> '' ORDER BY {column}
                    ON CONFLICT (external_id) DO NOTHING"""
            )
        cursor.execute(
            f"""INSERT INTO catalog_item AS i (external_id, title, description, category_id, brand_id, price,
                                               in_stock, active, tags, attributes, created_at, updated_at)
                SELECT s.item_id, s.title, s.description, c.id, b.id, s.price, s.in_stock, true, s.tags, '{{}}',
                       s.created_at, now()
                FROM {_STAGE} s
                LEFT JOIN catalog_category c ON c.external_id = s.category
                LEFT JOIN catalog_brand b ON b.external_id = s.brand
                ORDER BY s.item_id
                ON CONFLICT (external_id) DO UPDATE SET {assignments}, updated_at = now()
                WHERE ROW({mine}) IS DISTINCT FROM ROW({theirs})
                RETURNING (xmax = 0) AS inserted"""
        )
        results = cursor.fetchall()
    inserted = sum(1 for (flag,) in results if flag)
    summary.stored += inserted
    summary.updated += len(results) - inserted
    summary.duplicates += len(batch) - len(results)
