"""Item attributes in process memory, laid out for serving's vectorised hot path.

A request looks at a few hundred candidates. What the pipeline needs of each of them (category, brand, available,
price, listing time) lives in dense numpy arrays indexed by the item's primary key, so gathering them is one fancy
index per attribute, never a Python loop over candidates. The full rows (title, category name, ...) are kept in an
LRU for the few items a response shows (20,000 rows: every row object is one more for the garbage collector to walk).

The arrays hold the whole catalog: read in one query on a process's first request, then kept current by the
catalog version in Redis (every item write bumps it after commit; checked at most twice a second). When it moves,
only the items updated since the last sync are read again (the item_updated index), with a margin of ten minutes
for transactions that began before the last sync and committed after it, and the whole catalog again every
fifteen minutes. So a deactivated or sold-out item leaves lists within a second, and an item added without a
version bump (a placeholder created by an event) is read by one query the first time a request meets it.

While Postgres is unreachable the arrays keep the recommendation endpoints answering (marked degraded when an
item had to be looked up); unknown items count as unavailable. While Redis is unreachable no version can be seen,
so every check re-reads the recently updated items instead.

Memory: 18 bytes per primary key (18 MB for a million items) plus the row LRU. A full read of a million items
takes a second or two: on a process's first request, then every fifteen minutes in a background thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache
from django.db import DatabaseError, connection

from catalog import selectors as catalog_selectors
from catalog.selectors import ItemRow
from catalog.services import CATALOG_VERSION_KEY
from kernel.versions import read_version

logger = logging.getLogger(__name__)

_CHECK_SECONDS = 0.5
_FULL_SYNC_SECONDS = 900.0
_DELTA_MARGIN_SECONDS = 600.0


@dataclass(frozen=True, slots=True, eq=False)
class ItemAttributes:
    """Per-candidate attributes, aligned with the ``pks`` they were asked for."""

    known: npt.NDArray[np.bool_]  # False: not in the catalog (or unknown while Postgres is down)
    category: npt.NDArray[np.int64]  # -1 for none
    brand: npt.NDArray[np.int64]  # -1 for none
    available: npt.NDArray[np.bool_]  # active and in stock (False when unknown)
    price: npt.NDArray[np.float64]  # NaN for none
    created_ts: npt.NDArray[np.float64]  # Unix time the item was listed (``now`` when unknown)


class ItemCache:
    def __init__(self, *, row_cache_size: int = 20_000, id_cache_size: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._loaded = np.zeros(0, bool)
        self._category = np.zeros(0, np.int32)
        self._brand = np.zeros(0, np.int32)
        self._available = np.zeros(0, bool)
        self._price = np.zeros(0, np.float32)
        self._created = np.zeros(0, np.float32)
        self._rows: LRUCache[int, ItemRow] = LRUCache(maxsize=row_cache_size)
        # External id -> pk. Filled for the whole catalog when it fits (the ids a storefront sends in `exclude`
        # then never cost a query), else as ids are met. Ids never move to another item, so this survives syncs;
        # ids found unknown are remembered apart and forgotten at every sync (the item may have been added).
        self._pk_of: LRUCache[str, int] = LRUCache(maxsize=id_cache_size)
        self._unknown_ids: LRUCache[str, bool] = LRUCache(maxsize=10_000)
        self._token: bytes | None = None
        self._checked = -np.inf
        self._synced_at = -np.inf  # monotonic time of the last full sync
        self._watermark: float | None = None  # the latest updated_at (Unix time) read so far
        self._sync_lock = threading.Lock()
        self.background: threading.Thread | None = None  # the last background full re-read (tests join it)

    # --- Freshness -------------------------------------------------------------------------------------------

    def _check_version(self) -> None:
        now = time.monotonic()
        if now - self._checked < _CHECK_SECONDS:
            return
        self._checked = now
        token = read_version(CATALOG_VERSION_KEY)  # None, unknown: re-read the recently updated items at every check
        full_due = now - self._synced_at >= _FULL_SYNC_SECONDS
        if token is not None and token == self._token and not full_due:
            return
        if not self._sync_lock.acquire(blocking=False):
            return  # another thread is syncing; this request uses the arrays as they are
        if full_due and self._watermark is not None and token is not None and token == self._token:
            # Only the periodic full re-read is due (a second or two on a million items): in the background, so
            # no request waits for it; requests meanwhile use the arrays as they are.
            self.background = threading.Thread(
                target=self._sync_in_background, args=(token, now), name="item-cache-sync", daemon=True
            )
            self.background.start()
            return
        try:
            self._sync(token, now)
        finally:
            self._sync_lock.release()

    def _sync_in_background(self, token: bytes | None, now: float) -> None:
        try:
            self._sync(token, now)
        finally:
            connection.close()  # this thread's own database connection
            self._sync_lock.release()

    def _sync(self, token: bytes | None, now: float) -> None:
        full = self._watermark is None or now - self._synced_at >= _FULL_SYNC_SECONDS
        since = None if full or self._watermark is None else self._watermark - _DELTA_MARGIN_SECONDS
        try:
            columns = catalog_selectors.item_attribute_columns(updated_since=since)
        except DatabaseError:
            logger.warning("item_cache_sync_failed", exc_info=True)
            return  # keep serving the arrays as they are; the next check tries again
        with self._lock:
            if full:
                self._loaded[:] = False
            if columns.pk.size:
                top = int(columns.pk.max()) + 1
                if top > self._loaded.size:
                    self._grow(max(top, int(self._loaded.size * 1.25)))
                pks = columns.pk
                self._loaded[pks] = True
                self._category[pks] = columns.category_id
                self._brand[pks] = columns.brand_id
                self._available[pks] = columns.available
                self._price[pks] = columns.price
                self._created[pks] = columns.created_ts
                # Never past this process's own clock: a row another host wrote with its clock ahead (an hour, say)
                # moved the watermark an hour on, and every delta sync then missed the rows written meanwhile by hosts
                # on time (an item taken out of stock kept being served until the next full read, 15 minutes).
                newest = min(float(columns.updated_ts.max()), time.time())
                self._watermark = max(self._watermark or -np.inf, newest)
            elif self._watermark is None:
                self._watermark = time.time() - _DELTA_MARGIN_SECONDS
            if full:
                self._rows.clear()
            else:
                for pk in columns.pk.tolist():
                    self._rows.pop(pk, None)
            self._unknown_ids.clear()
            self._token = token
            if full:
                self._synced_at = now
        self._sync_ids(columns.pk, full=full)
        (logger.info if full else logger.debug)(
            "item_cache_synced", extra={"full": full, "items": int(columns.pk.size)}
        )

    def _sync_ids(self, pks: npt.NDArray[np.int64], *, full: bool) -> None:
        """External ids, and the full rows when they all fit in the row LRU (a demo-sized catalog then needs no
        query at all on the request path)."""
        if pks.size == 0 or pks.size > self._pk_of.maxsize:
            return
        try:
            ids = catalog_selectors.item_external_ids(pks=None if full else pks.tolist())
            rows = catalog_selectors.item_rows(pks=pks.tolist()) if pks.size <= self._rows.maxsize else {}
        except DatabaseError:
            logger.warning("item_cache_sync_failed", exc_info=True)
            return
        with self._lock:
            self._pk_of.update(ids)
            self._rows.update(rows)

    def _forget(self) -> None:
        self._loaded[:] = False
        self._rows.clear()
        self._pk_of.clear()
        self._unknown_ids.clear()
        self._watermark = None

    def token(self) -> str:
        """The catalog version the cached attributes belong to: part of every list-cache key, so a cached list
        never outlives a change to one of its items."""
        self._check_version()
        return self._token.decode() if self._token is not None else "unknown"

    def clear(self) -> None:
        with self._lock:
            self._forget()
            self._token = None
        self._checked = self._synced_at = -np.inf

    # --- Reads -----------------------------------------------------------------------------------------------

    def attributes(self, pks: npt.NDArray[np.int64], *, now: float) -> tuple[ItemAttributes, bool]:
        """(attributes of ``pks``, fresh): one query for the items not cached yet; ``fresh`` is False when that
        query failed (the missing items then count as unknown)."""
        self._check_version()
        pks = np.asarray(pks, np.int64)
        fresh = True
        missing = self._missing(pks)
        if missing.size:
            try:
                self._store(catalog_selectors.item_rows(pks=missing.tolist()).values(), missing)
            except DatabaseError:
                logger.warning("catalog_rows_from_memory", exc_info=True)
                fresh = False
        with self._lock:
            inside = (pks >= 0) & (pks < self._loaded.size)
            safe = np.where(inside, pks, 0)
            known = inside & self._loaded[safe] & (self._category[safe] != -2)
            attributes = ItemAttributes(
                known=known,
                category=np.where(known, self._category[safe], -1).astype(np.int64),
                brand=np.where(known, self._brand[safe], -1).astype(np.int64),
                available=known & self._available[safe],
                price=np.where(known, self._price[safe], np.nan).astype(np.float64),
                created_ts=np.where(known, self._created[safe], now).astype(np.float64),
            )
        return attributes, fresh

    def rows(self, pks: Iterable[int]) -> dict[int, ItemRow]:
        """Full rows of a few items (the ones a response shows); unknown pks are left out, and so are the ones
        not cached while Postgres is down."""
        wanted = list(dict.fromkeys(pks))
        with self._lock:
            found = {pk: row for pk in wanted if (row := self._rows.get(pk)) is not None}
        missing = [pk for pk in wanted if pk not in found]
        if missing:
            try:
                loaded = catalog_selectors.item_rows(pks=missing)
            except DatabaseError:
                logger.warning("catalog_rows_from_memory", exc_info=True)
                return found
            self._store(loaded.values(), np.asarray(missing, np.int64))
            found.update(loaded)
        return found

    def pks_of(self, item_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Primary keys of the given external ids (unknown ids left out): from memory, else one query. Unknown
        ids are remembered too (as -1), so a storefront sending the same stray id costs one query, not one each
        time."""
        self._check_version()
        with self._lock:
            found = [pk for item_id in item_ids if (pk := self._pk_of.get(item_id)) is not None]
            missing = [i for i in item_ids if i not in self._pk_of and i not in self._unknown_ids]
        if missing:
            try:
                extra = catalog_selectors.item_pks(external_ids=missing)
            except DatabaseError:
                logger.warning("exclude_ids_unresolved", exc_info=True)
            else:
                with self._lock:
                    self._pk_of.update(extra)
                    self._unknown_ids.update((i, True) for i in missing if i not in extra)
                found.extend(extra.values())
        return np.asarray(found, np.int64)

    # --- Internals -------------------------------------------------------------------------------------------

    def _missing(self, pks: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        with self._lock:
            inside = (pks >= 0) & (pks < self._loaded.size)
            loaded = np.zeros(pks.size, bool)
            loaded[inside] = self._loaded[pks[inside]]
        return np.unique(pks[~loaded & (pks >= 0)])

    def _store(self, rows: Iterable[ItemRow], asked: npt.NDArray[np.int64]) -> None:
        rows = list(rows)
        with self._lock:
            top = int(asked.max()) + 1 if asked.size else 0
            if top > self._loaded.size:
                self._grow(max(top, int(self._loaded.size * 1.5)))
            # Asked for but not found: remembered as "not in the catalog" (category -2) until the version moves.
            self._loaded[asked] = True
            self._category[asked] = -2
            self._available[asked] = False
            if rows:
                pks = np.fromiter((r.pk for r in rows), np.int64, len(rows))
                self._category[pks] = np.fromiter((r.category_id for r in rows), np.int32, len(rows))
                self._brand[pks] = np.fromiter((r.brand_id for r in rows), np.int32, len(rows))
                self._available[pks] = np.fromiter((r.available for r in rows), bool, len(rows))
                self._price[pks] = np.fromiter(
                    (r.price if r.price is not None else np.nan for r in rows), np.float32, len(rows)
                )
                self._created[pks] = np.fromiter((r.created_ts for r in rows), np.float32, len(rows))
                for row in rows:
                    self._rows[row.pk] = row
                    self._pk_of[row.item_id] = row.pk

    def _grow(self, size: int) -> None:
        def grown(array: npt.NDArray[np.generic], fill: object) -> npt.NDArray[np.generic]:
            out = np.full(size, fill, array.dtype)
            out[: array.size] = array
            return out

        self._loaded = grown(self._loaded, False)
        self._category = grown(self._category, -1)
        self._brand = grown(self._brand, -1)
        self._available = grown(self._available, False)
        self._price = grown(self._price, np.nan)
        self._created = grown(self._created, 0.0)
