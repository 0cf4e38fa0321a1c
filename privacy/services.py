"""A customer's data rights (GDPR): personalisation opt-out and opt-in, erasure and export.

They span every app that keeps something about a customer, which is why they live here, above the apps: catalog (the
customer row), events (interactions in Postgres, history and affinities in Redis, the sessions merged into the
customer), experiments (impressions, queued in Redis then stored: the customer's own, those served under their id
before their row existed, and those a merged session was served before its merge) and ranking (recommendation lists
cached in Redis under the customer's id).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kombu.exceptions
import redis
from celery import current_app
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from catalog import erasure
from catalog.models import Category, Customer, Item
from catalog.services import customer_upsert
from events import online
from events.keys import customer_owner
from events.models import Interaction, SessionMerge
from experiments.models import Impression
from experiments.services import IMPRESSION_PUSH_INTERVAL_SECONDS, impressions_flush
from experiments.units import customer_unit
from kernel.models import ApiKey
from privacy.models import ErasureRecord
from ranking import cache

logger = logging.getLogger(__name__)

# Queued impressions are flushed before an erasure (see customer_erase); at most this many batches of 2,000.
_ERASURE_FLUSH_BATCHES = 50
_FLUSH_LOCK_WAIT_SECONDS = 2.0
_EXPORT_CHUNK = 2000


class CustomerNotFound(LookupError):
    """No customer with this id."""


class CustomerErased(Exception):
    """The id was erased and has no customer row: only an explicit ``PUT /v1/customers/{id}`` creates it again."""

    message = (
        "This customer id was erased; a consent change does not create it again. Create the customer first "
        "(PUT /v1/customers/<id>) if they are back."
    )


# --- Opt-out and opt-in -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Personalisation:
    customer_id: str
    personalisation_opt_out: bool


def customer_personalisation_set(*, customer_id: str, opted_out: bool) -> Personalisation:
    """Record the customer's choice; an unknown customer is created, so a choice made before their first event
    still holds for it, unless the id was erased (:class:`CustomerErased`: a storefront syncing consent flags must
    not undo an erasure). ``customer_id`` is validated by the caller (at most 100 characters).

    Serving keeps the opted-out ids in memory and reloads them when the opt-out version moves (bumped by
    ``customer_upsert`` after commit, seen within half a second): an opted-out customer then gets the anonymous
    list, and training leaves their events out (ranking.selectors). Their cache version is bumped too,
    so no list cached before the change is served after it. A Redis failure there is logged, not raised: the
    choice is stored, and cached lists expire within a minute anyway.
    """
    with transaction.atomic():
        # The row locked first: an erasure under way holds it, so this waits, finds it gone and then sees the
        # erasure's suppression entry (read after the wait), instead of creating the customer again behind it.
        known = Customer.objects.select_for_update().filter(external_id=customer_id).values_list("pk", flat=True)
        if not list(known) and erasure.erased_ids([customer_id]):
            raise CustomerErased(customer_id)
        customer, _ = customer_upsert(external_id=customer_id, personalisation_opt_out=opted_out)
    try:
        online.bump_cache_versions([customer_owner(customer_id)])
    except redis.RedisError:
        logger.warning("personalisation_cache_bump_failed", exc_info=True)
    logger.info("customer_personalisation_set", extra={"opted_out": opted_out})
    return Personalisation(customer.external_id, customer.personalisation_opt_out)


# --- Erasure ------------------------------------------------------------------------------------------------


def customer_erase(*, customer_id: str, requested_by_key_id: int | None = None) -> ErasureRecord:
    """Erase everything stored about the customer and keep only the fact that an erasure happened.

    In this order, so that a failure leaves nothing half done that a retry would not finish:

    1. Redis first (queued impressions flushed into Postgres, history and affinities deleted, cache version bumped):
       with Redis down this raises ``redis.RedisError`` before anything is deleted, and the caller answers 503.
    2. One Postgres transaction: the impressions the customer's merged sessions were served before their merge
       (:func:`_merged_session_impressions`: they carry the session, not the customer), those served under their id
       before their row existed (:func:`_unit_impressions`: they carry only the id's pseudonymous unit) and its
       session merges, then the customer row with its interactions and impressions (ON DELETE CASCADE of their
       foreign keys), an :class:`ErasureRecord` that names nobody, and the id's suppression-list entry
       (catalog.erasure): afterwards events naming the id are rejected, a merge into it refused, and impressions
       of it stored without a customer or unit, so nothing brings the customer back but an explicit PUT.
    3. Redis again, best effort: history an event racing the erasure may have re-created, and every cached
       recommendation list of the customer in every key form (ranking.cache.owner_entries_delete; the version
       bump of step 1 already made them unreachable, and they would expire within a minute anyway).

    An id that never had a customer row but was named in reads (lists served under it are stored with its unit,
    step 2) is erased the same way: its impressions deleted, its cached lists too, the id suppressed.

    Raises :class:`CustomerNotFound` when nothing is stored under the id. Trained model versions keep an anonymous
    row for the customer's primary key until the next training run, which cannot see them any more.
    """
    known = Customer.objects.filter(external_id=customer_id).exists()
    if not known and erasure.erased_ids([customer_id]):
        # Erased before: what was served under the id since keeps no unit (nothing links it to the id).
        raise CustomerNotFound(customer_id)
    owner = customer_owner(customer_id)
    _impressions_flush_queued()
    if not known and not _unit_impressions(customer_id).exists():
        raise CustomerNotFound(customer_id)  # nothing stored under the id: nothing to erase, Redis left alone
    online_keys = online.forget_owner(owner)

    with transaction.atomic():
        customer = Customer.objects.select_for_update().filter(external_id=customer_id).first()
        # Before the row: those served under its id before it existed, the lists its session merges gave it, then
        # the merges themselves (a customer deleted otherwise keeps them, customerless: events.SessionMerge).
        customerless_impressions = _unit_impressions(customer_id).delete()[0]
        deleted: dict[str, int] = {}
        if customer is not None:
            customer_pk = customer.pk
            customerless_impressions += _merged_session_impressions(customer_pk).delete()[0]
            SessionMerge.objects.filter(customer_id=customer_pk).delete()
            _, deleted = customer.delete()
            # The admin's change log of the customer's row names them (its text is their id): gone with it.
            LogEntry.objects.filter(
                content_type=ContentType.objects.get_for_model(Customer), object_id=str(customer_pk)
            ).delete()
        elif not customerless_impressions:
            # Nothing stored under the id (never named, or erased by a concurrent request meanwhile).
            raise CustomerNotFound(customer_id)
        # Nothing may create the customer again implicitly (events, merges, impressions): catalog.erasure.
        erasure.tombstone_add(customer_id=customer_id, erased_at=timezone.now())
        prefix = ""
        if requested_by_key_id is not None:
            prefix = ApiKey.objects.filter(pk=requested_by_key_id).values_list("prefix", flat=True).first() or ""
        record = ErasureRecord.objects.create(
            erased_at=timezone.now(),
            requested_by_key_prefix=prefix,
            interactions_deleted=deleted.get(Interaction._meta.label, 0),
            impressions_deleted=deleted.get(Impression._meta.label, 0) + customerless_impressions,
            online_keys_deleted=online_keys,
        )

    try:
        record.online_keys_deleted += online.forget_owner(owner)
        # Every key form (alone, or beside a session): the version bump above already made them unreachable.
        record.cached_lists_deleted = cache.owner_entries_delete(owner)
    except redis.RedisError:
        # The customer is gone from Postgres; what a racing event left in Redis goes with the next
        # rebuild_online_state, cached lists expire within a minute.
        logger.warning("erasure_redis_cleanup_failed", exc_info=True, extra={"erasure": record.pk})
    else:
        ErasureRecord.objects.filter(pk=record.pk).update(
            online_keys_deleted=record.online_keys_deleted, cached_lists_deleted=record.cached_lists_deleted
        )
    _forget_again_later(customer_id)
    logger.info("customer_erased", extra={"erasure": record.pk, "interactions": record.interactions_deleted})
    return record


# An event batch committed just before the erasure took the customer's row writes its Redis step right after its
# commit, and may do so after the erasure's clean-up: one more clean-up this much later removes what it wrote.
FORGET_AGAIN_SECONDS = 10.0
FORGET_AGAIN_TASK = "privacy.tasks.forget_erased_owner"


def _forget_again_later(customer_id: str) -> None:
    """Queue :func:`erased_owner_forget` (privacy.tasks); a broker failure is logged (a rebuild forgets it too)."""
    try:
        # By name: the tasks module imports this one.
        current_app.send_task(FORGET_AGAIN_TASK, args=(customer_id,), countdown=FORGET_AGAIN_SECONDS)
    except (redis.RedisError, kombu.exceptions.OperationalError):
        logger.warning("erasure_forget_again_not_queued", exc_info=True)


def erased_owner_forget(*, customer_id: str) -> bool:
    """Forget an erased customer's online state once more, unless the id was created again since (an explicit PUT:
    its new state is its own). True when it forgot."""
    if Customer.objects.filter(external_id=customer_id).exists():
        return False
    online.forget_owner(customer_owner(customer_id))
    return True


def _impressions_flush_queued() -> None:
    """Store the impressions still queued in Redis, so the CASCADE removes the customer's with the rest.

    Left in the queue, a later flush would store them and, naming an unknown customer, create the row again.
    Web processes push their buffered impressions to the queue every ``IMPRESSION_PUSH_INTERVAL_SECONDS``: two
    intervals are waited out first, so lists served before the erasure began are in the queue. Another flush
    holding the lock is waited for (briefly), since it may be storing exactly those records.
    """
    time.sleep(2 * IMPRESSION_PUSH_INTERVAL_SECONDS)
    deadline = time.monotonic() + _FLUSH_LOCK_WAIT_SECONDS
    while impressions_flush(max_batches=_ERASURE_FLUSH_BATCHES).skipped and time.monotonic() < deadline:
        time.sleep(0.1)


def _merged_session_impressions(customer_pk: int) -> QuerySet[Impression]:
    """The anonymous impressions a session merge gave the customer: of a session merged into them (events.SessionMerge),
    served before that merge and after any earlier merge of the session into someone else (the first merge of the
    session at or after an impression was served is the customer's). Flushed before or after the merge alike.

    The merge leaves them anonymous: their unit is the session, which the experiment's assignment hashed and its
    results count (experiments.selectors); given to the customer, the session's lists would become a unit of theirs.
    """
    merges = list(SessionMerge.objects.filter(customer_id=customer_pk).values_list("session_id", "merged_at"))
    if not merges:
        return Impression.objects.none()
    sessions = sorted({session_id for session_id, _ in merges})
    last_merge = max(merged_at for _, merged_at in merges)
    first_merge = (
        SessionMerge.objects.filter(session_id=OuterRef("session_id"), merged_at__gte=OuterRef("served_at"))
        .order_by("merged_at", "id")
        .values("customer_id")[:1]
    )
    return (
        # The clauses of the partial index impression_anon_session, so it serves the lookup.
        Impression.objects.filter(customer__isnull=True, session_id__in=sessions, served_at__lte=last_merge)
        .exclude(session_id="")
        .alias(merged_into=Subquery(first_merge))
        .filter(merged_into=customer_pk)
    )


def _unit_impressions(customer_id: str) -> QuerySet[Impression]:
    """The impressions of lists served under the customer's id before their row existed: stored without the customer
    (the flush creates none) but with the id's pseudonymous unit (experiments.units). By the partial index
    impression_customer_unit, whose clauses these are."""
    return Impression.objects.filter(customer__isnull=True, customer_unit=customer_unit(customer_id))


# --- Export -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerExport:
    """Everything stored about a customer. The small parts are read at once (so a missing customer or an
    unreachable Redis is known before anything is sent); interactions and impressions are iterators that read
    Postgres in chunks while the response streams, so a long history costs bounded memory."""

    exported_at: datetime
    customer: dict[str, Any]
    online: dict[str, Any]
    session_merges: list[dict[str, Any]]  # the anonymous sessions handed to the customer, oldest first
    interactions: Iterator[dict[str, Any]]
    impressions: Iterator[dict[str, Any]]


def customer_export(*, customer_id: str) -> CustomerExport:
    """The customer's data as plain values: the customer row, the sessions merged into them, every interaction and
    impression (those still queued in Redis are stored first; with those served under their id before their row
    existed and those their merged sessions were served before the merge), and the online state (recent history
    and category affinities) from Redis. An id that never had a customer row but was named in reads exports the
    lists served under it (``created_at`` null). Raises :class:`CustomerNotFound` when nothing is stored under the
    id, and ``redis.RedisError`` when Redis is unavailable: an export without the online state would be
    incomplete."""
    row = (
        Customer.objects.filter(external_id=customer_id)
        .values("id", "external_id", "created_at", "attributes", "personalisation_opt_out")
        .first()
    )
    if row is None and erasure.erased_ids([customer_id]):
        raise CustomerNotFound(customer_id)
    _impressions_flush_queued()
    if row is None and not _unit_impressions(customer_id).exists():
        raise CustomerNotFound(customer_id)
    if row is None:
        # No row: no interactions, merges or online state are anyone's; only the lists served under the id.
        customer: dict[str, Any] = {
            "customer_id": customer_id, "created_at": None, "attributes": {}, "personalisation_opt_out": False,
        }  # fmt: skip
        return CustomerExport(
            exported_at=timezone.now(), customer=customer, online=_online_state(customer_owner(customer_id)),
            session_merges=[], interactions=iter(()), impressions=_impressions(None, customer_id),
        )  # fmt: skip
    customer = dict(row)
    customer_pk = customer.pop("id")
    customer["customer_id"] = customer.pop("external_id")
    return CustomerExport(
        exported_at=timezone.now(),
        customer=customer,
        online=_online_state(customer_owner(customer_id)),
        session_merges=[
            {"session_id": session_id, "merged_at": merged_at}
            for session_id, merged_at in SessionMerge.objects.filter(customer_id=customer_pk)
            .order_by("merged_at", "id")
            .values_list("session_id", "merged_at")
        ],
        interactions=_interactions(customer_pk),
        impressions=_impressions(customer_pk, customer_id),
    )


def _online_state(owner: str) -> dict[str, Any]:
    history = online.read_history(owner, limit=online.HISTORY_LENGTH)
    affinity = online.read_affinity(owner)
    dismissed_pks, dismissed_ts = online.read_dismissed(owner)
    had_pks, had_types = online.read_had(owner)
    item_ids = _item_ids([*(row.item_pk for row in history), *dismissed_pks.tolist(), *had_pks.tolist()])
    categories = dict(Category.objects.filter(pk__in=list(affinity)).values_list("pk", "external_id"))
    return {
        "history": [
            {
                "item_id": item_ids.get(row.item_pk, str(row.item_pk)),
                "type": Interaction.Type(row.type).label,
                "occurred_at": datetime.fromtimestamp(row.ts, UTC),
            }
            for row in history
        ],
        # "Not interested" (dismiss events): items never shown to the customer again.
        "dismissed": [
            {"item_id": item_ids.get(pk, str(pk)), "dismissed_at": datetime.fromtimestamp(ts, UTC)}
            for pk, ts in zip(dismissed_pks.tolist(), dismissed_ts.tolist(), strict=True)
        ],
        # Items bought or rated over the whole history (events.keys.had): left out of personal lists.
        "had": [
            {"item_id": item_ids.get(pk, str(pk)), "type": Interaction.Type(type_).label}
            for pk, type_ in zip(had_pks.tolist(), had_types.tolist(), strict=True)
        ],
        "category_affinity": {
            categories.get(pk, str(pk)): round(weight, 6) for pk, weight in affinity.items() if math.isfinite(weight)
        },
    }


def _item_ids(pks: Iterable[int]) -> dict[int, str]:
    return dict(Item.objects.filter(pk__in=set(pks)).values_list("pk", "external_id"))


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _interactions(customer_pk: int) -> Iterator[dict[str, Any]]:
    rows = (
        Interaction.objects.filter(customer_id=customer_pk)
        .order_by("occurred_at", "id")
        .values_list(
            "event_id", "item__external_id", "session_id", "type", "value", "occurred_at", "received_at", "request_id"
        )
    )
    for event_id, item_id, session_id, type_, value, occurred_at, received_at, request_id in rows.iterator(
        chunk_size=_EXPORT_CHUNK
    ):
        yield {
            "event_id": event_id,
            "item_id": item_id,
            "session_id": session_id,
            "type": Interaction.Type(type_).label,
            "value": _finite(value),
            "occurred_at": occurred_at,
            "received_at": received_at,
            "request_id": request_id,
        }


_IMPRESSION_COLUMNS = (
    "id", "request_id", "served_at", "surface", "session_id", "experiment__key", "variant__name", "model_version",
    "item_pks",
)  # fmt: skip


def _impressions(customer_pk: int | None, customer_id: str) -> Iterator[dict[str, Any]]:
    """``customer_pk`` None: an id without a row, whose only lists are those served under its unit."""
    # UNION ALL: each part by its own index (an OR would scan the table); disjoint: with a customer, then without one
    # those of their id's unit, then those of a merged session that are not (a list served under their id with a
    # session they later merged is both).
    before_their_row = _unit_impressions(customer_id).values_list(*_IMPRESSION_COLUMNS)
    if customer_pk is None:
        rows = before_their_row.order_by("served_at", "id")
    else:
        own = Impression.objects.filter(customer_id=customer_pk).values_list(*_IMPRESSION_COLUMNS)
        merged = (
            _merged_session_impressions(customer_pk)
            .exclude(customer_unit=customer_unit(customer_id))
            .values_list(*_IMPRESSION_COLUMNS)
        )
        rows = own.union(before_their_row, merged, all=True).order_by("served_at", "id")
    chunk: list[Sequence[Any]] = []
    for row in rows.iterator(chunk_size=_EXPORT_CHUNK):
        chunk.append(row)
        if len(chunk) >= _EXPORT_CHUNK:
            yield from _impression_dicts(chunk)
            chunk = []
    yield from _impression_dicts(chunk)


def _impression_dicts(rows: Sequence[Sequence[Any]]) -> Iterator[dict[str, Any]]:
    item_ids = _item_ids(pk for row in rows for pk in row[8])
    for _, request_id, served_at, surface, session_id, experiment, variant, model_version, item_pks in rows:
        yield {
            "request_id": request_id,
            "served_at": served_at,
            "surface": surface,
            "session_id": session_id,
            "experiment": experiment,
            "variant": variant,
            "model_version": model_version,
            "item_ids": [item_ids.get(pk, str(pk)) for pk in item_pks],
        }
