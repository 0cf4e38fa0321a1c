"""Catalog reads that return model rows or plain data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.utils import timezone

from catalog.models import Category, Customer, Item


def item_get(*, external_id: str) -> Item | None:
    return Item.objects.select_related("category", "brand").filter(external_id=external_id).first()


def customer_get(*, external_id: str) -> Customer | None:
    return Customer.objects.filter(external_id=external_id).first()


@dataclass(frozen=True)
class ItemRow:
    """What serving needs to know about an item, as plain values."""

    pk: int
    item_id: str
    title: str
    category_id: int  # -1 for none
    category: str | None  # the category's external id
    category_name: str | None
    brand_id: int  # -1 for none
    price: float | None
    created_ts: float
    available: bool  # active and in stock


def item_rows(*, pks: Sequence[int]) -> dict[int, ItemRow]:
    """Attributes of the given items, in one query."""
    if not pks:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT i.id, i.external_id, i.title, coalesce(i.category_id, -1), c.external_id, c.name,
                      coalesce(i.brand_id, -1), i.price, extract(epoch FROM i.created_at), i.active AND i.in_stock
               FROM catalog_item i LEFT JOIN catalog_category c ON c.id = i.category_id
               WHERE i.id = ANY(%s)""",
            [list(pks)],
        )
        rows = cursor.fetchall()
    return {
        row[0]: ItemRow(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            float(row[7]) if row[7] is not None else None,
            float(row[8]),
            row[9],
        )  # fmt: skip
        for row in rows
    }


@dataclass(frozen=True, eq=False)
class ItemAttributeColumns:
    """What serving's hot path needs of many items, as columns (one entry per item)."""

    pk: npt.NDArray[np.int64]
    category_id: npt.NDArray[np.int64]  # -1 for none
    brand_id: npt.NDArray[np.int64]  # -1 for none
    available: npt.NDArray[np.bool_]  # active and in stock
    price: npt.NDArray[np.float64]  # NaN for none
    created_ts: npt.NDArray[np.float64]
    updated_ts: npt.NDArray[np.float64]


# One row of `COPY ... (FORMAT binary)` of the query below: a field count, then each field as its length and
# big-endian value. Every column is NOT NULL (coalesced), so every row has the same size and numpy reads the whole
# stream in one call: a million items in a fraction of a second, where fetching them as Python tuples took seconds.
_ATTRIBUTE_ROW = np.dtype([
    ("fields", ">i2"), ("l0", ">i4"), ("pk", ">i8"), ("l1", ">i4"), ("category_id", ">i8"), ("l2", ">i4"),
    ("brand_id", ">i8"), ("l3", ">i4"), ("available", "?"), ("l4", ">i4"), ("price", ">f8"), ("l5", ">i4"),
    ("created_ts", ">f8"), ("l6", ">i4"), ("updated_ts", ">f8"),
])  # fmt: skip
_ATTRIBUTES_SELECT = """SELECT id::int8, coalesce(category_id, -1)::int8, coalesce(brand_id, -1)::int8,
    active AND in_stock, coalesce(price::float8, 'NaN'), extract(epoch FROM created_at)::float8,
    extract(epoch FROM updated_at)::float8 FROM catalog_item"""
_ATTRIBUTES_COPY = "COPY (" + _ATTRIBUTES_SELECT + ") TO STDOUT (FORMAT binary)"
_ATTRIBUTES_SINCE_COPY = (
    "COPY (" + _ATTRIBUTES_SELECT + " WHERE updated_at >= to_timestamp(%s)) TO STDOUT (FORMAT binary)"
)
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def item_attribute_columns(
    *, updated_since: float | None = None, using: str = DEFAULT_DB_ALIAS
) -> ItemAttributeColumns:
    """Every item's attributes (or those of the items updated at or after ``updated_since``, Unix time, by the
    item_updated index), in one binary COPY on the ``using`` database (training passes the replica's alias)."""
    sql = _ATTRIBUTES_SINCE_COPY if updated_since is not None else _ATTRIBUTES_COPY
    params = None if updated_since is None else (float(updated_since),)
    buffer = bytearray()
    with connections[using].cursor() as cursor, cursor.cursor.copy(sql, params) as copy:
        for chunk in copy:
            buffer += chunk
    if not buffer.startswith(_COPY_SIGNATURE):
        raise ValueError("unexpected COPY stream")
    extension = int.from_bytes(buffer[15:19], "big")
    body = memoryview(buffer)[19 + extension : len(buffer) - 2]  # header; trailer (a field count of -1)
    table = np.frombuffer(body, dtype=_ATTRIBUTE_ROW)
    return ItemAttributeColumns(
        pk=table["pk"].astype(np.int64),
        category_id=table["category_id"].astype(np.int64),
        brand_id=table["brand_id"].astype(np.int64),
        available=table["available"].copy(),
        price=table["price"].astype(np.float64),
        created_ts=table["created_ts"].astype(np.float64),
        updated_ts=table["updated_ts"].astype(np.float64),
    )


def item_pks(*, external_ids: Iterable[str]) -> dict[str, int]:
    """Primary keys of the given items' external ids (unknown ids left out), in one query."""
    wanted = sorted(set(external_ids))
    if not wanted:
        return {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT external_id, id FROM catalog_item WHERE external_id = ANY(%s::text[])", [wanted])
        return dict(cursor.fetchall())


def customer_pks(*, external_ids: Iterable[str], locked: bool = False) -> dict[str, int]:
    """Primary keys of the customers that exist (unknown ids left out), in one query. Creates nothing: for the
    customers an event may create, :func:`catalog.services.customer_pks_get_or_create`. ``locked``: inside a
    transaction that will reference them, the rows are locked against an erasure (``FOR KEY SHARE``) until it ends,
    so a customer erased meanwhile is not found rather than failing the transaction's foreign keys at COMMIT."""
    wanted = sorted(set(external_ids))
    if not wanted:
        return {}
    sql = "SELECT external_id, id FROM catalog_customer WHERE external_id = ANY(%s::text[])"
    with connection.cursor() as cursor:
        cursor.execute(sql + " FOR KEY SHARE" if locked else sql, [wanted])
        return dict(cursor.fetchall())


def customer_pks_present(*, pks: Sequence[int]) -> set[int]:
    """Those of the customer primary keys ``pks`` whose row still exists, in one query."""
    if not pks:
        return set()
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM catalog_customer WHERE id = ANY(%s::bigint[])", [list(pks)])
        return {row[0] for row in cursor.fetchall()}


def item_external_ids(*, pks: Sequence[int] | None = None) -> dict[str, int]:
    """External id -> primary key of the given items (every item when ``pks`` is None), in one query."""
    with connection.cursor() as cursor:
        if pks is None:
            cursor.execute("SELECT external_id, id FROM catalog_item")
        else:
            cursor.execute("SELECT external_id, id FROM catalog_item WHERE id = ANY(%s)", [list(pks)])
        return dict(cursor.fetchall())


def item_pk(*, external_id: str) -> int | None:
    return Item.objects.filter(external_id=external_id).values_list("pk", flat=True).first()


def category_pk(*, external_id: str) -> int | None:
    return Category.objects.filter(external_id=external_id).values_list("pk", flat=True).first()


def newest_available_item_pks(*, limit: int) -> list[int]:
    """The latest listed items that are active and in stock (the item_created index), items listed at the same
    instant by id: ties ordered by nothing came back in whatever order the table's pages held them, so two
    processes (or the same one after a vacuum) could serve different new arrivals.

    Listed by now: an item's ``created_at`` may lie ahead (up to the year 3000, ``models.CREATED_MAX``), and one
    listed in 2999 was served as the newest arrival above everything listed since, for centuries. It is new from its
    time on (serving keeps this list a minute), as evaluation's offline lists count it (ranking.pipeline.offline).
    """
    return list(
        Item.objects.filter(active=True, in_stock=True, created_at__lte=timezone.now())
        .order_by("-created_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )


def opted_out_customer_ids() -> frozenset[str]:
    """External ids of every customer who opted out of personalisation (the customer_opted_out partial index)."""
    return frozenset(Customer.objects.filter(personalisation_opt_out=True).values_list("external_id", flat=True))


def customer_opted_out(*, external_id: str) -> bool:
    """False for an unknown customer: nobody has opted out yet."""
    return bool(
        Customer.objects.filter(external_id=external_id).values_list("personalisation_opt_out", flat=True).first()
    )
