"""Reads for training, evaluation and the model registry; they return plain data (arrays, tuples, dataclasses)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from catalog import selectors as catalog_selectors
from catalog.models import Item
from events.parsing import event_time_sql
from kernel.db_router import read_alias, replica_reads
from ranking import artifact_store
from ranking.arrays import index_of
from ranking.dataset import InteractionLog, ItemTable, item_text, log_from_arrays
from ranking.models import ModelVersion

# One pass over the interactions, opted-out customers' events left out (anonymous session events stay: they feed
# co-purchase and popularity). The window bounds are parameters; NULL means unbounded. The time is the one the
# events' rule allows (events.parsing.event_time_sql): a row stored before it, dated 9999, moved the data's "now".
_INTERACTIONS_SQL = f"""
    SELECT COALESCE(i.customer_id, -1), i.item_id, i.type, COALESCE(i.value, 'NaN'::float8),
           EXTRACT(EPOCH FROM {event_time_sql("i")})::float8, i.session_id
    FROM events_interaction i
    LEFT JOIN catalog_customer c ON c.id = i.customer_id
    WHERE (c.id IS NULL OR NOT c.personalisation_opt_out)
      AND i.occurred_at >= COALESCE(%s::timestamptz, '-infinity'::timestamptz)
      AND i.occurred_at < COALESCE(%s::timestamptz, 'infinity'::timestamptz)
    ORDER BY 5, i.event_id
"""  # noqa: S608 (interpolates a constant expression of the events app; values go as parameters)
_FETCH_ROWS = 200_000


@dataclass(frozen=True)
class VersionLocation:
    version_id: int
    name: str
    checksum: str
    path: Path


def interaction_columns(
    *, since: datetime | None = None, until: datetime | None = None, using: str = DEFAULT_DB_ALIAS
) -> dict[str, np.ndarray]:
    """Columns of the interactions in ``[since, until)``: customer pk (-1 anonymous), item pk, type, value
    (NaN when none), Unix time, session id, from the ``using`` database (training passes the replica's alias).
    Fetched in chunks so the driver's row tuples stay bounded. In time order, ties by event id (with the time, the
    idempotency key: unique), so the rows' order is the data's, not the plan's: the validation split breaks ties
    in time (ratings saved in the same second) by position, and an unordered scan returns rows in physical order,
    which parallel import writers and parallel scans vary."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("customer", "item", "type", "value", "ts", "session")}
    with connections[using].cursor() as cursor:
        cursor.execute(_INTERACTIONS_SQL, [since, until])
        while rows := cursor.fetchmany(_FETCH_ROWS):
            customer, item, type_, value, ts, session = zip(*rows, strict=True)
            parts["customer"].append(np.array(customer, dtype=np.int64))
            parts["item"].append(np.array(item, dtype=np.int64))
            parts["type"].append(np.array(type_, dtype=np.int8))
            parts["value"].append(np.array(value, dtype=np.float32))
            parts["ts"].append(np.array(ts, dtype=np.float64))
            parts["session"].append(np.array(session, dtype=object))
    dtypes = {"customer": np.int64, "item": np.int64, "type": np.int8, "value": np.float32, "ts": np.float64}
    return {
        name: np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtypes.get(name, object))
        for name, chunks in parts.items()
    }


def interaction_time_range() -> tuple[datetime | None, datetime | None]:
    """Earliest and latest time of all interactions (None, None when there are none), as the events' rule counts
    them (``event_time_sql``): training's window ends after the latest, and a row stored in year 9999 before the
    rule made that an ``OverflowError`` (the nightly training failed) or made ``--days 30`` the 30 days before it."""
    with connections[read_alias()].cursor() as cursor:  # the replica inside replica_reads, as the ORM's read was
        cursor.execute(f"SELECT min({event_time_sql('i')}), max({event_time_sql('i')}) FROM events_interaction i")  # noqa: S608 (a constant expression)
        first, last = cursor.fetchone()
    return first, last


def item_rows() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every item (active or not: serving filters availability) in pk order: pks, category pks (-1 none), texts."""
    rows = (
        Item.objects.order_by("id")
        .values_list("id", "category_id", "title", "description", "category__name", "brand__name", "tags")
        .iterator(chunk_size=20_000)
    )
    ids: list[int] = []
    categories: list[int] = []
    texts: list[str] = []
    for pk, category_id, title, description, category, brand, tags in rows:
        ids.append(pk)
        categories.append(category_id if category_id is not None else -1)
        texts.append(item_text(title, description or "", category or "", brand or "", " ".join(tags or ())))
    return np.array(ids, dtype=np.int64), np.array(categories, dtype=np.int32), texts


def item_pks_by_external_id(external_ids: Iterable[str]) -> dict[str, int]:
    """The catalog's lookup (catalog.selectors.item_pks), under the name evaluation's callers use."""
    return catalog_selectors.item_pks(external_ids=external_ids)


def customer_pks_by_external_id(external_ids: Iterable[str]) -> dict[str, int]:
    """The catalog's lookup (catalog.selectors.customer_pks), under the name evaluation's callers use."""
    return catalog_selectors.customer_pks(external_ids=external_ids)


# --- Registry -------------------------------------------------------------------------------------------------


def active_version() -> ModelVersion | None:
    return ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()


def active_version_id() -> int | None:
    return ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).values_list("id", flat=True).first()


def _location(row: tuple[int, str, str, str]) -> VersionLocation:
    """Where this host memory-maps the version: the registered directory with the default local storage (or, when
    that directory is not on this host, the one of its name under this host's ``ARTIFACT_ROOT``: a database
    restored on another host, or artifacts moved with ``ARTIFACT_ROOT``; a ninth tester's restore served no model);
    with a remote one, the directory of that name in this host's cache (``artifact_path`` is the training host's)."""
    pk, name, checksum, path = row
    if artifact_store.colocated():
        local = Path(path) if path else Path(settings.ARTIFACT_ROOT) / name
        if not local.is_dir() and (Path(settings.ARTIFACT_ROOT) / local.name).is_dir():
            local = Path(settings.ARTIFACT_ROOT) / local.name
    else:
        local = artifact_store.local_path(Path(path).name if path else name)
    return VersionLocation(version_id=pk, name=name, checksum=checksum, path=local)


def active_version_location() -> VersionLocation | None:
    row = (
        ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE)
        .values_list("id", "name", "checksum", "artifact_path")
        .first()
    )
    return _location(row) if row else None


def version_location(*, version_id: int) -> VersionLocation | None:
    row = ModelVersion.objects.filter(id=version_id).values_list("id", "name", "checksum", "artifact_path").first()
    return _location(row) if row else None


def previous_version_locations(*, exclude_id: int, limit: int = 3) -> list[VersionLocation]:
    """The versions active before (retired ones, most recently activated first), but ``exclude_id``."""
    rows = (
        ModelVersion.objects.filter(status=ModelVersion.Status.RETIRED, activated_at__isnull=False)
        .exclude(id=exclude_id)
        .order_by("-activated_at")
        .values_list("id", "name", "checksum", "artifact_path")[:limit]
    )
    return [_location(row) for row in rows]


def version_list(*, limit: int = 20) -> list[ModelVersion]:
    return list(ModelVersion.objects.order_by("-created_at")[:limit])


def versions_with_artifacts() -> list[tuple[int, str, str, str]]:
    """(id, status, name, artifact_path) of every version, newest first, for pruning old directories."""
    return list(ModelVersion.objects.order_by("-created_at").values_list("id", "status", "name", "artifact_path"))


def dataset_load(*, since: datetime | None = None, until: datetime | None = None) -> tuple[InteractionLog, ItemTable]:
    """Interactions (opted-out customers excluded) in ``[since, until)`` and the whole catalog, from Postgres: from
    the replica when one is configured (``DATABASE_REPLICA_URL``), as these are a training's long scans."""
    with replica_reads() as using:
        ids, category, texts = item_rows()  # the ORM: routed to ``using`` by kernel.db_router
        # Price and listing time for the ranker's features, by the same binary COPY serving's item cache reads.
        attributes = catalog_selectors.item_attribute_columns(using=using)
        columns = interaction_columns(since=since, until=until, using=using)
    order = np.argsort(attributes.pk)
    row = index_of(attributes.pk[order], ids)
    found = row >= 0
    price = np.where(found, attributes.price[order][np.maximum(row, 0)], np.nan)
    created = np.where(found, attributes.created_ts[order][np.maximum(row, 0)], np.nan)
    items = ItemTable(item_ids=ids, category=category, texts=texts, price=price, created_ts=created)
    return log_of(columns, items), items


def log_of(columns: dict[str, np.ndarray], items: ItemTable, *, sessions: bool = True) -> InteractionLog:
    """:func:`interaction_columns`' arrays as an interaction log over ``items`` (without sessions: no baskets)."""
    return log_from_arrays(
        customer=columns["customer"], item=columns["item"], type_=columns["type"], value=columns["value"],
        ts=columns["ts"], session=columns["session"] if sessions else None, items=items,
    )  # fmt: skip
