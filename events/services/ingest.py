"""Real-time ingestion through the API and the session merge: stored in Postgres, then applied to the online
state in Redis."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import redis
from django.db import IntegrityError, connection, transaction

from catalog.services import customer_pks_get_or_create
from events import keys, online
from events.metrics import EVENTS_INGESTED, EVENTS_REJECTED, ONLINE_STATE_ERRORS
from events.models import Interaction, SessionMerge
from events.parsing import utcnow
from events.services.imports import EVENT_ID_LOCK_CLASS, EVENT_IDS_LOCKED_SQL, RETRY_WINDOW, event_id_buckets
from events.validation import ParsedEvent, Rejection, parse_events

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """What became of a request's events: ``accepted + duplicates + len(rejected)`` is the number sent."""

    accepted: int  # newly stored
    duplicates: int  # already stored (same event_id), or repeated within the request: acknowledged, stored once
    rejected: tuple[Rejection, ...]  # by index, with the reasons; nothing of them is stored


def event_ingest_batch(*, events: Sequence[Any], received_at: datetime | None = None) -> IngestResult:
    """Validate raw API events, store the valid ones durably, then add the new ones to the online state.

    The Postgres transaction commits before Redis is touched, so an event reported as accepted is never lost;
    call this outside any transaction of your own (inside one, "accepted" would only mean "savepoint released").
    A Redis failure after the commit is logged and counted, not raised: ``rebuild_online_state`` repairs it.
    """
    now = received_at or utcnow()
    parsed, rejected = parse_events(list(events), now=now)
    try:
        stored, unknown, duplicates = _events_store(parsed, received_at=now)
    except IntegrityError as error:
        # A customer of the batch was erased (or an item deleted) between its read and this COMMIT (the deferred
        # foreign key failed): once more, and the id is then found erased (or unknown) and its events refused by
        # field. Cheaper on the hot path than locking every customer read (FOR KEY SHARE: about 10% on concurrent
        # single events, 5 December).
        if not isinstance(error.__cause__, psycopg.errors.ForeignKeyViolation):
            raise
        stored, unknown, duplicates = _events_store(parsed, received_at=now)
    rejected.extend(unknown)
    rejected.sort(key=lambda rejection: rejection.index)

    if rejected:
        EVENTS_REJECTED.inc(len(rejected))
    for type_, count in Counter(row.event.type for row in stored).items():
        EVENTS_INGESTED.labels(type=Interaction.Type(type_).label).inc(count)
    if stored:
        _online_apply([row.online() for row in stored], now=now.timestamp())
    return IngestResult(accepted=len(stored), duplicates=duplicates, rejected=tuple(rejected))


@dataclass(frozen=True)
class _StoredEvent:
    event: ParsedEvent
    interaction_pk: int
    item_pk: int
    category_pk: int | None

    def online(self) -> online.OnlineEvent:
        event = self.event
        return online.OnlineEvent(
            owner=keys.owner_for(customer_id=event.customer_id, session_id=event.session_id),
            interaction_pk=self.interaction_pk,
            item_pk=self.item_pk,
            category_pk=self.category_pk,
            type=event.type,
            value=event.value,
            ts=event.occurred_at.timestamp(),
        )


def _events_store(
    parsed: list[ParsedEvent], *, received_at: datetime
) -> tuple[list[_StoredEvent], list[Rejection], int]:
    """One transaction: bulk item lookup, bulk customer upsert, bulk insert ``ON CONFLICT (event_id, occurred_at)
    DO NOTHING``.

    Returns the newly stored events, the rejections for unknown items and the number of duplicates.
    """
    if not parsed:
        return [], [], 0
    unknown: list[Rejection] = []
    duplicates = 0
    # Raw psycopg errors become Django's, so the API's handler answers an unreachable database with 503.
    with connection.wrap_database_errors, transaction.atomic(), _binary_cursor() as cursor:
        # With the items, this transaction's turn for the ids of its events without occurred_at (whose retries get
        # another arrival time, so only the turn tells them apart: events.services.imports.event_ids_lock; a
        # concurrent writer of one of them waits here, then finds it stored), in the same round trip. An event
        # with its own time needs none: a retry repeats the unique key (event_id, occurred_at).
        cursor.execute(
            "SELECT external_id, id, category_id FROM catalog_item WHERE external_id = ANY(%b::text[]) "
            f"AND {EVENT_IDS_LOCKED_SQL}",
            [
                sorted({event.item_id for event in parsed}),
                EVENT_ID_LOCK_CLASS,
                event_id_buckets(event.event_id for event in parsed if not event.time_given),
            ],
        )
        items: dict[str, tuple[int, int | None]] = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
        valid: dict[str, ParsedEvent] = {}
        for event in parsed:
            if event.item_id not in items:
                unknown.append(Rejection(event.index, {"item_id": [f"Unknown item_id {event.item_id!r}."]}))
            elif event.event_id in valid:
                duplicates += 1
            else:
                valid[event.event_id] = event
        if not valid:
            return [], unknown, duplicates
        customers = customer_pks_get_or_create(
            external_ids={event.customer_id for event in valid.values()},
            created_at=received_at,
            cursor=cursor,
            locked=False,  # event_ingest_batch retries when an erasure wins (above)
        )
        for event_id, event in list(valid.items()):
            if event.customer_id and event.customer_id not in customers:
                # An erased id (catalog.erasure): its events are refused, so the erasure sticks.
                unknown.append(Rejection(event.index, {"customer_id": [ERASED_CUSTOMER_MESSAGE]}))
                del valid[event_id]
        if not valid:
            return [], unknown, duplicates
        # Inserted in event_id order: two concurrent requests carrying the same events then wait on each other's
        # unique-index entries in the same order, instead of deadlocking.
        batch = [valid[event_id] for event_id in sorted(valid)]
        cursor.execute(
            """INSERT INTO events_interaction
                   (event_id, customer_id, session_id, item_id, type, value, occurred_at, received_at, request_id)
               SELECT e, c, s, i, t, v, o, %b, r
               FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::bigint[], %b::smallint[], %b::float8[],
                           %b::timestamptz[], %b::text[]) AS u(e, c, s, i, t, v, o, r)
               -- The table is partitioned by month, so its unique key is (event_id, occurred_at): an event_id
               -- already stored at another time (a retry whose occurred_at defaulted to its arrival) is skipped
               -- here, looked up within RETRY_WINDOW of the batch's times so only those partitions are probed.
               WHERE NOT EXISTS (SELECT 1 FROM events_interaction x
                                  WHERE x.event_id = u.e AND x.occurred_at >= %b AND x.occurred_at <= %b)
               ON CONFLICT (event_id, occurred_at) DO NOTHING
               RETURNING event_id, id""",
            [
                received_at,
                [event.event_id for event in batch],
                [customers[event.customer_id] if event.customer_id else None for event in batch],
                [event.session_id for event in batch],
                [items[event.item_id][0] for event in batch],
                [event.type for event in batch],
                [event.value for event in batch],
                [event.occurred_at for event in batch],
                [event.request_id for event in batch],
                min(event.occurred_at for event in batch) - RETRY_WINDOW,
                max(event.occurred_at for event in batch) + RETRY_WINDOW,
            ],
        )
        inserted: dict[str, int] = dict(cursor.fetchall())
    duplicates += len(batch) - len(inserted)
    stored = [
        _StoredEvent(event, inserted[event.event_id], *items[event.item_id])
        for event in sorted(batch, key=lambda event: event.index)
        if event.event_id in inserted
    ]
    return stored, unknown, duplicates


def _binary_cursor() -> psycopg.Cursor[Any]:
    """A server-side-binding psycopg cursor on Django's connection (and so inside its transaction).

    Django's cursors bind parameters client-side, as SQL text; the arrays of a 500-event batch then cost more to
    quote than to insert. Sent in binary (``%b``) they cost a third.
    """
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


ERASED_CUSTOMER_MESSAGE = (
    "This customer id was erased: nothing naming it is stored (events, session merges). Send events without "
    "customer_id, or create the customer again (PUT /v1/customers/<id>) first."
)


class CustomerErased(Exception):
    """The customer id is on the erasure suppression list and has no customer row (see catalog.erasure)."""

    field = "customer_id"
    message = ERASED_CUSTOMER_MESSAGE


def _online_apply(events: list[online.OnlineEvent], *, now: float) -> None:
    try:
        online.apply_events(events, now=now)
    except redis.RedisError:
        # The events are committed: answering an error would make the client resend what is already stored.
        ONLINE_STATE_ERRORS.inc()
        logger.exception("online_state_update_failed", extra={"events": len(events)})


@dataclass(frozen=True)
class SessionMergeResult:
    session_id: str
    customer_id: str
    interactions_merged: int  # anonymous interactions of the session that now carry the customer


def session_merge(*, session_id: str, customer_id: str) -> SessionMergeResult:
    """Give an anonymous session's interactions to the customer who just logged in, in Postgres and in Redis, and
    record the merge (:class:`SessionMerge`).

    Ids are validated by the caller. Raises :class:`CustomerErased` for an erased customer id (without a row).
    Idempotent: the UPDATE only touches interactions without a customer and the Redis merge deletes what it moved;
    a retry after a Redis failure still merges the online state (and is recorded as a merge of its own).

    The session's impressions are not updated: they stay with the session, the unit the experiments assigned and
    their results count (experiments.selectors), and the recorded merge makes the ones served before it the
    customer's for export and erasure (privacy.services), those the impression log stores only after the merge too.

    Merges of one session take turns (a session-level advisory lock on the session id, held from before the
    Postgres transaction until the Redis step is done, and only that lock: the transaction commits first, so a slow
    Redis holds no row): the Redis merge is three steps, and two merges of one session at once (into two
    customers, or a retry beside the original) had both read the session's state before either deleted it, so the
    second customer got the first one's history, which that customer's erasure then left behind, and affinities
    counted twice.
    """
    session_owner = keys.owner_for(customer_id="", session_id=session_id)
    turn = [f"session-merge:{session_id}"]
    with connection.wrap_database_errors:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", turn)
        try:
            with transaction.atomic(), _binary_cursor() as cursor:
                customer_pk = customer_pks_get_or_create(
                    external_ids={customer_id}, created_at=utcnow(), cursor=cursor
                ).get(customer_id)
                if customer_pk is None:
                    raise CustomerErased(customer_id)
                merged = Interaction.objects.filter(session_id=session_id, customer__isnull=True).update(
                    customer_id=customer_pk
                )
                # Taken under the session's lock: merges of one session are recorded in the order they happened.
                SessionMerge.objects.create(session_id=session_id, customer_id=customer_pk, merged_at=utcnow())
            try:
                online.merge_owner(source=session_owner, target=keys.customer_owner(customer_id))
            except redis.RedisError:
                ONLINE_STATE_ERRORS.inc()
                logger.exception("online_state_merge_failed", extra={"session_id": session_id})
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", turn)
    logger.info("session_merged", extra={"session_id": session_id, "merged": merged})
    return SessionMergeResult(session_id=session_id, customer_id=customer_id, interactions_merged=merged)
