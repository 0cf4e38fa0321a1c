"""The events online state in Redis: recent history, category affinities, cache versions, hourly item counters
and the folded item features. Writes and raw reads only; every key comes from events.keys, and every operation
is one pipeline round trip (or one per chunk, for the bulk writes of a rebuild).

Functions raise ``redis.RedisError``; callers decide whether that is fatal (see events.services/selectors).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import redis
from redis.client import Pipeline

from events import keys
from events.features import (
    COUNTED_NAMES,
    COUNTED_TYPES,
    DISMISS,
    PURCHASE,
    RATING,
    decay_to,
    forward_decayed,
    interest_weight,
)
from kernel import redis_client, tracking

HISTORY_LENGTH = 200
# What an owner already has (keys.had): the event types kept and how many distinct (item, type) members, the newest.
HAD_TYPES: tuple[int, ...] = (PURCHASE, RATING)
HAD_LENGTH = 2000
# How long what an answer showed stays excludable by ``exclude_request_ids`` (keys.shown): a page visit.
SHOWN_TTL_SECONDS = 1800
# An anonymous session nobody has touched for a month will not log in any more; its keys go.
SESSION_TTL_SECONDS = 30 * 86_400
# Every per-owner key expires (Redis runs without eviction for the state database, so keys must bound themselves):
# a customer's after half a year without events. A customer who comes back later starts from an empty recent
# history (the trained model still knows them); a rebuild_online_state restores it from Postgres.
CUSTOMER_TTL_SECONDS = 180 * 86_400


def owner_ttl_seconds(owner: str) -> int:
    """How long an owner's history, affinities and cache version live after their last event."""
    return SESSION_TTL_SECONDS if keys.is_session_owner(owner) else CUSTOMER_TTL_SECONDS


# Trending and CTR look back seven days; one more day of buckets lets a fold at any hour see full days.
COUNTER_RETENTION_SECONDS = 8 * 86_400
HOUR = 3600
# An event's arrival time waits this long for a list to reflect it (keys.arrival).
ARRIVAL_TTL_SECONDS = 3600

_COUNTER_NAME: dict[int, str] = dict(zip(COUNTED_TYPES, COUNTED_NAMES, strict=True))


class OnlineEvent(NamedTuple):
    """A newly stored event as the online state sees it."""

    owner: str  # keys.owner_for(...)
    interaction_pk: int
    item_pk: int
    category_pk: int | None
    type: int
    value: float | None
    ts: float  # Unix time of occurred_at


class HistoryRow(NamedTuple):
    item_pk: int
    type: int
    ts: float


def history_member(*, item_pk: int, type_: int, interaction_pk: int) -> str:
    # The interaction pk makes the member unique (two views of one item are two entries) and a re-add a no-op.
    return f"{item_pk}:{type_}:{interaction_pk}"


def had_member(*, item_pk: int, type_: int) -> str:
    # One member per (item, type): buying an item twice keeps one entry, scored with the latest time.
    return f"{item_pk}:{type_}"


def counter_expiry(hour: int) -> int:
    """Unix time at which the counter bucket of ``hour`` expires."""
    return (hour + 1) * HOUR + COUNTER_RETENTION_SECONDS


def first_live_hour(now: float) -> int:
    """The oldest hour whose counter bucket has not expired at ``now``."""
    return int((now - COUNTER_RETENTION_SECONDS) // HOUR)


# --- Writes -------------------------------------------------------------------------------------------------


def apply_events(events: Sequence[OnlineEvent], *, now: float) -> None:
    """Add newly stored events to history, affinities and counters (a ``dismiss`` to the owner's dismissed set
    instead), bump their owners' cache versions and note the arrival time serving's freshness histogram reads.

    One round trip. On a single Redis one MULTI/EXEC, so a failure leaves either all of the batch or none of it; on a
    cluster the batch spans owners (slots) and is split by node, so a failure may leave part of it (the state is
    derived: ``rebuild_online_state`` restores it from Postgres). Callers pass only events that were not stored
    before, so a retried request never counts twice.
    """
    if not events:
        return
    history: dict[str, dict[str, float]] = defaultdict(dict)
    dismissed: dict[str, dict[str, float]] = defaultdict(dict)
    had: dict[str, dict[str, float]] = defaultdict(dict)
    affinity: dict[tuple[str, int], float] = defaultdict(float)
    counters: Counter[tuple[str, int, int]] = Counter()
    owners: dict[str, None] = {}
    oldest_hour = first_live_hour(now)
    for event in events:
        owners[event.owner] = None
        if event.type == DISMISS:
            # Not an interest: no history entry, affinity or counter; the latest dismissal's time is kept.
            item = str(event.item_pk)
            dismissed[event.owner][item] = max(event.ts, dismissed[event.owner].get(item, event.ts))
            continue
        member = history_member(item_pk=event.item_pk, type_=event.type, interaction_pk=event.interaction_pk)
        history[event.owner][member] = event.ts
        if event.type in HAD_TYPES:
            owned = had_member(item_pk=event.item_pk, type_=event.type)
            had[event.owner][owned] = max(event.ts, had[event.owner].get(owned, event.ts))
        if event.category_pk is not None:
            weight = interest_weight(event.type, event.value)
            affinity[(event.owner, event.category_pk)] += forward_decayed(weight, event.ts)
        name = _COUNTER_NAME.get(event.type)
        hour = int(event.ts // HOUR)
        # A late event whose bucket has already expired is left out, as a rebuild would leave it out.
        if name is not None and hour >= oldest_hour:
            counters[(name, hour, event.item_pk)] += 1

    pipe = redis_client.batch()
    for owner, members in history.items():
        key = keys.history(owner)
        pipe.zadd(key, members)
        pipe.zremrangebyrank(key, 0, -HISTORY_LENGTH - 1)
    for owner, items in dismissed.items():
        # GT: a replayed older dismissal never moves an item's time back.
        pipe.zadd(keys.dismissed(owner), items, gt=True)
    for owner, members in had.items():
        # GT as for dismissals; the oldest members beyond HAD_LENGTH go.
        pipe.zadd(keys.had(owner), members, gt=True)
        pipe.zremrangebyrank(keys.had(owner), 0, -HAD_LENGTH - 1)
    for (owner, category_pk), weight in affinity.items():
        pipe.zincrby(keys.affinity(owner), weight, category_pk)
    buckets: dict[str, int] = {}
    for (name, hour, item_pk), count in counters.items():
        key = keys.item_counter(name, hour)
        pipe.hincrby(key, item_pk, count)
        buckets[key] = hour
    for key, hour in buckets.items():
        pipe.expireat(key, counter_expiry(hour))
    for owner in owners:
        pipe.incr(keys.cache_version(owner))
        pipe.set(keys.arrival(owner), repr(now), nx=True, ex=ARRIVAL_TTL_SECONDS)
        _expire_owner(pipe, owner)
    pipe.execute()
    _versions_moved(owners)


def merge_owner(*, source: str, target: str) -> None:
    """Move ``source``'s history, affinities, dismissals and had items into ``target`` and delete the source's;
    copy what its answers showed (``keys.shown``, which the session keeps for its own later requests).

    The two owners live in different hash slots (on a cluster, maybe on different nodes), so the move is three
    single-slot steps instead of one cross-slot MULTI: read the source's keys (one MULTI on its slot), add them to
    the target's (one MULTI: ``ZADD GT`` keeps the later time of an event found under both owners, as the old
    ``ZUNIONSTORE ... MAX`` did; ``ZINCRBY`` sums affinities), then delete the source's (one MULTI). An event the
    source receives between the first and the last step is dropped from the online state (it stays in Postgres; a
    rebuild restores it): a login is the moment the session stops receiving events, so the window is empty in
    practice. Idempotent: a second call finds nothing left under ``source``. Both cache versions are bumped.
    """
    source_history, source_affinity, source_dismissed, source_had = (
        keys.history(source),
        keys.affinity(source),
        keys.dismissed(source),
        keys.had(source),
    )
    read = redis_client.atomic(source_history)
    read.zrange(source_history, 0, -1, withscores=True)
    read.zrange(source_affinity, 0, -1, withscores=True)
    read.zrange(source_dismissed, 0, -1, withscores=True)
    read.zrange(source_had, 0, -1, withscores=True)
    read.hgetall(keys.shown(source))
    read.pttl(keys.shown(source))
    history, affinity, dismissed, had, shown, shown_ttl_ms = read.execute()

    target_history, target_affinity = keys.history(target), keys.affinity(target)
    pipe = redis_client.atomic(target_history)
    if history:
        pipe.zadd(target_history, dict(history), gt=True)
        pipe.zremrangebyrank(target_history, 0, -HISTORY_LENGTH - 1)
    for category, score in affinity:
        pipe.zincrby(target_affinity, score, category)
    if dismissed:  # the latest dismissal of an item found under both owners
        pipe.zadd(keys.dismissed(target), dict(dismissed), gt=True)
    if had:  # the latest time of an item bought (or rated) under both owners
        pipe.zadd(keys.had(target), dict(had), gt=True)
        pipe.zremrangebyrank(keys.had(target), 0, -HAD_LENGTH - 1)
    if shown:  # what the visit was shown before the login: the customer's "load more" still leaves it out
        # Kept as long as the session would have kept it (not a fresh SHOWN_TTL_SECONDS), nor shortening the
        # customer's own: the later of the two expiries.
        ttl_ms = shown_ttl_ms if shown_ttl_ms > 0 else SHOWN_TTL_SECONDS * 1000
        fields = [value for pair in shown.items() for value in pair]
        merged = redis_client.script(_SHOWN_MERGED, slot_key=keys.shown(target))
        merged(keys=[keys.shown(target)], args=[ttl_ms, *fields], client=pipe)
    pipe.incr(keys.cache_version(target))
    # Without it the version, bumped here, would outlive its owner forever.
    _expire_owner(pipe, target)
    pipe.execute()

    pipe = redis_client.atomic(source_history)
    pipe.unlink(source_history, source_affinity, source_dismissed, source_had)
    pipe.incr(keys.cache_version(source))
    _expire_owner(pipe, source)
    pipe.execute()
    _versions_moved((target, source))


def _versions_moved(owners: Iterable[str]) -> None:
    """This process bumped these owners' cache versions: its own list cache stops trusting what it read of them at
    once (other processes hear it from Redis, kernel/tracking.py)."""
    tracking.forget(keys.cache_version(owner) for owner in owners)


def _expire_owner(pipe: Pipeline, owner: str) -> None:
    ttl = owner_ttl_seconds(owner)
    for key in (
        keys.history(owner), keys.affinity(owner), keys.dismissed(owner), keys.had(owner), keys.cache_version(owner),
    ):  # fmt: skip
        pipe.expire(key, ttl)


def write_histories(histories: Mapping[str, Mapping[str, float]]) -> None:
    """Rebuild: set each owner's history (members as from :func:`history_member`, scores = Unix time)."""
    pipe = redis_client.get().pipeline(transaction=False)
    for owner, members in histories.items():
        key = keys.history(owner)
        pipe.zadd(key, dict(members))
        pipe.zremrangebyrank(key, 0, -HISTORY_LENGTH - 1)
        pipe.expire(key, owner_ttl_seconds(owner))
    pipe.execute()


def write_dismissed(dismissed: Mapping[str, Mapping[int, float]]) -> None:
    """Rebuild: set each owner's dismissed items (item pk -> Unix time of the latest dismissal)."""
    pipe = redis_client.get().pipeline(transaction=False)
    for owner, items in dismissed.items():
        key = keys.dismissed(owner)
        pipe.zadd(key, {str(pk): ts for pk, ts in items.items()}, gt=True)
        pipe.expire(key, owner_ttl_seconds(owner))
    pipe.execute()


def write_had(had: Mapping[str, Mapping[str, float]]) -> None:
    """Rebuild: add to each owner's had items (members as from :func:`had_member`, scores = Unix time of the
    latest such event), trimmed to the newest ``HAD_LENGTH``."""
    pipe = redis_client.get().pipeline(transaction=False)
    for owner, members in had.items():
        key = keys.had(owner)
        pipe.zadd(key, dict(members), gt=True)
        pipe.zremrangebyrank(key, 0, -HAD_LENGTH - 1)
        pipe.expire(key, owner_ttl_seconds(owner))
    pipe.execute()


def write_affinities(affinities: Mapping[str, Mapping[int, float]]) -> None:
    """Rebuild: set each owner's category scores (already in forward-decayed landmark units)."""
    pipe = redis_client.get().pipeline(transaction=False)
    for owner, scores in affinities.items():
        key = keys.affinity(owner)
        # A non-finite score (from rows stored before values were bounded) is left out rather than stored.
        finite = {str(category): score for category, score in scores.items() if math.isfinite(score)}
        if not finite:
            continue
        pipe.zadd(key, finite)
        pipe.expire(key, owner_ttl_seconds(owner))
    pipe.execute()


def write_counters(cells: Mapping[tuple[str, int], Mapping[int, int]]) -> None:
    """Rebuild: set whole counter buckets, ``(type name, hour) -> {item pk: count}``."""
    pipe = redis_client.get().pipeline(transaction=False)
    for (name, hour), counts in cells.items():
        key = keys.item_counter(name, hour)
        pipe.hset(key, mapping=dict(counts))
        pipe.expireat(key, counter_expiry(hour))
    pipe.execute()


def bump_cache_versions(owners: Iterable[str]) -> None:
    owners = list(owners)
    pipe = redis_client.get().pipeline(transaction=False)
    for owner in owners:
        pipe.incr(keys.cache_version(owner))
        pipe.expire(keys.cache_version(owner), owner_ttl_seconds(owner))
    pipe.execute()
    _versions_moved(owners)


# How long a forgotten owner's bumped cache version lives on: longer than any cached list (ranking.serving caches
# lists for 60 s ± 10%), so every list cached under an older version has expired before the counter could restart.
FORGOTTEN_VERSION_TTL_SECONDS = 600


def forget_owner(owner: str, *, version_ttl_seconds: int = FORGOTTEN_VERSION_TTL_SECONDS) -> int:
    """Erasure: delete the owner's history, affinities, dismissed and had items and make every list cached for them
    unreachable, in one MULTI (the owner's keys share its hash tag). Returns how many keys were deleted.

    The cache version is bumped, not deleted: a deleted one would restart at 0 and could meet a list cached under
    that number before. It expires after ``version_ttl_seconds`` (chosen longer than any cached list lives), so no
    key naming the owner is left behind.
    """
    pipe = redis_client.atomic(keys.history(owner))
    pipe.unlink(
        keys.history(owner), keys.affinity(owner), keys.dismissed(owner), keys.had(owner), keys.arrival(owner),
        keys.shown(owner),
    )  # fmt: skip
    pipe.incr(keys.cache_version(owner))
    pipe.expire(keys.cache_version(owner), version_ttl_seconds)
    deleted, _, _ = pipe.execute()
    _versions_moved((owner,))
    return int(deleted)


def clear_rebuildable(*, batch: int = 1000) -> int:
    """Delete every rebuildable key (``keys.REBUILDABLE_PREFIXES``: SCAN by prefix, never FLUSHDB); return how
    many."""
    client = redis_client.get()
    deleted = 0
    for prefix in keys.REBUILDABLE_PREFIXES:
        chunk: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=batch):
            chunk.append(key)
            if len(chunk) >= batch:
                deleted += client.unlink(*chunk)
                chunk = []
        if chunk:
            deleted += client.unlink(*chunk)
    return deleted


def mark_incomplete(*, request_ttl_seconds: int, token: str) -> None:
    """A rebuild begins: until it ends, readers must not take the online state for the whole story, and need not
    ask for another rebuild (this one counts as the requested one, whoever started it). The request holds the
    rebuild's ``token`` (:func:`rebuild_token`), so only this rebuild renews or releases it, and lives
    ``request_ttl_seconds`` unless the rebuild renews it (:func:`hold_rebuild_request`), so a rebuild killed
    outright does not keep serving from asking for long. Precondition: the rebuild lock is held."""
    pipe = redis_client.atomic(keys.ONLINE_STATE_COMPLETE)  # both keys carry the tag {online}
    pipe.delete(keys.ONLINE_STATE_COMPLETE)
    pipe.set(keys.REBUILD_REQUESTED, token, ex=request_ttl_seconds)
    pipe.execute()


def mark_complete(*, now: float, sentinels: bool = True) -> None:
    """A rebuild ended: the online state holds everything Postgres held, and a rebuild may be requested again.

    The sentinels (and their list) are written before the marker: a serving process looking in between would
    otherwise compare the new marker with the last rebuild's list of sentinels and take it back. ``sentinels=False``:
    the caller wrote them before its first write and checked them just now (the rebuild); writing them again would
    give a master emptied in between a fresh one."""
    if sentinels:
        write_node_sentinels()
    pipe = redis_client.atomic(keys.ONLINE_STATE_COMPLETE)  # both keys carry the tag {online}
    pipe.set(keys.ONLINE_STATE_COMPLETE, str(now))
    pipe.delete(keys.REBUILD_REQUESTED)
    pipe.execute()
    # The markers of older formats sit in other slots: deleted on their own (DEL of several keys is split per slot
    # on a cluster).
    redis_client.get().delete(*keys.LEGACY_COMPLETE_MARKERS)


def write_node_sentinels() -> list[str]:
    """On a Redis Cluster, one small key on every master, named in :data:`keys.NODE_SENTINELS` (nothing on one
    Redis, whose lost data takes the completeness marker with it)."""
    client = redis_client.get()
    if not redis_client.is_cluster():
        return []
    names = []
    for node in client.get_primaries():  # type: ignore[union-attr]
        for n in range(100_000):
            name = f"online:{{node-{n}}}:sentinel"
            if client.get_node_from_key(name).name == node.name:  # type: ignore[union-attr]
                client.set(name, b"1")
                names.append(name)
                break
    client.set(keys.NODE_SENTINELS, json.dumps(names))
    return names


def node_sentinels_lost() -> list[str]:
    """The sentinels of :func:`write_node_sentinels` that are gone: a master restarted empty (or a replica promoted
    before it had them) since the last rebuild. Empty on one Redis, or before any rebuild wrote them."""
    client = redis_client.get()
    raw = client.get(keys.NODE_SENTINELS)
    if not raw:
        return []
    names = json.loads(raw)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    return [name for name, found in zip(names, pipe.execute(), strict=True) if not found]


def forget_completeness() -> None:
    """The online state is not whole any more (a cluster master lost its data): readers fall back to Postgres and
    ask for the rebuild, as when Redis lost everything."""
    redis_client.get().delete(keys.ONLINE_STATE_COMPLETE)


# What serving's claim writes into keys.REBUILD_REQUESTED (a rebuild that starts writes its own token over it).
REBUILD_REQUEST_QUEUED = "1"


def rebuild_token() -> str:
    """A fresh token for one rebuild's hold on keys.REBUILD_REQUESTED (never :data:`REBUILD_REQUEST_QUEUED`)."""
    return f"rebuild:{uuid.uuid4().hex}"


# Atomically: nothing to claim when the state is complete (the caller saw it incomplete a moment ago, while a
# rebuild was finishing), else the request, once.
_CLAIM_REBUILD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"""


def claim_rebuild_request(*, ttl_seconds: int) -> bool:
    """True for the one caller that should queue the rebuild (until a rebuild ends or ``ttl_seconds`` pass); False
    when the online state is complete by now. Without that check, a request that read the state just before a
    rebuild finished asked for another one, whose start made the state incomplete again for the next requests:
    rebuilds ran back to back for as long as traffic lasted (seen in bench_soak after a Redis restart). The claim
    holds :data:`REBUILD_REQUEST_QUEUED`."""
    claim = redis_client.script(_CLAIM_REBUILD, slot_key=keys.ONLINE_STATE_COMPLETE)
    return bool(
        claim(keys=[keys.ONLINE_STATE_COMPLETE, keys.REBUILD_REQUESTED], args=[ttl_seconds, REBUILD_REQUEST_QUEUED])
    )


# The running rebuild's hold on the request, renewed by its heartbeat; never once the state is complete, so a last
# beat after the rebuild marked it complete cannot leave a request behind that would keep the next loss from asking;
# never over another rebuild's token: one whose beat comes just after it lost its lock to that rebuild would take
# that rebuild's request, then release it (a serving claim, or nothing, it takes over).
_HOLD_REBUILD_REQUEST = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local current = redis.call('GET', KEYS[2])
if current and current ~= ARGV[2] and current ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
return 1
"""


def hold_rebuild_request(*, ttl_seconds: int, token: str) -> bool:
    """The running rebuild whose ``token`` it is still counts as the requested one for ``ttl_seconds`` more (its
    lock's heartbeat calls this): False, and nothing written, when the state is complete or the request is another
    rebuild's."""
    hold = redis_client.script(_HOLD_REBUILD_REQUEST, slot_key=keys.ONLINE_STATE_COMPLETE)
    return bool(
        hold(
            keys=[keys.ONLINE_STATE_COMPLETE, keys.REBUILD_REQUESTED],
            args=[ttl_seconds, token, REBUILD_REQUEST_QUEUED],
        )
    )


_RELEASE_REBUILD_REQUEST = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def release_rebuild_request(*, token: str) -> bool:
    """Let the next reader that finds the state incomplete ask for a rebuild at once (the request could not be
    sent, or the rebuild that counted as it stopped short); only if the request still holds ``token`` (the
    rebuild's, or :data:`REBUILD_REQUEST_QUEUED` for serving's claim): a rebuild that lost its lock must not release
    the request of the rebuild that took it. True if released. Best effort: unreadable Redis lets it expire."""
    release = redis_client.script(_RELEASE_REBUILD_REQUEST, slot_key=keys.REBUILD_REQUESTED)
    try:
        return bool(release(keys=[keys.REBUILD_REQUESTED], args=[token]))
    except redis.RedisError:
        return False


def write_item_features(blob: bytes) -> str:
    """Store the folded features and a fresh version token together; return the token."""
    version = uuid.uuid4().hex
    pipe = redis_client.atomic(keys.ITEM_FEATURES_BLOB)  # both keys carry the tag {items}
    pipe.set(keys.ITEM_FEATURES_BLOB, blob)
    pipe.set(keys.ITEM_FEATURES_VERSION, version)
    pipe.execute()
    return version


# --- Reads --------------------------------------------------------------------------------------------------


def read_history(owner: str, *, limit: int) -> list[HistoryRow]:
    """The owner's latest ``limit`` events, newest first."""
    return parse_history(redis_client.get().zrevrange(keys.history(owner), 0, limit - 1, withscores=True))


def parse_history(rows: list[tuple[bytes, float]]) -> list[HistoryRow]:
    pks, types, ts = parse_history_columns(rows)
    return [HistoryRow(*row) for row in zip(pks.tolist(), types.tolist(), ts.tolist(), strict=True)]


def parse_history_columns(
    rows: Sequence[tuple[bytes, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """History rows as three arrays (item pks, types, times), newest first: the members' digits parsed by numpy in
    one pass (a fifth of the time of a row-by-row parse, for the 200 rows serving reads)."""
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    members, scores = zip(*rows, strict=True)
    # Members are "<item pk>:<type>:<interaction pk>" (history_member): three integers each.
    fields = np.array(b":".join(members).split(b":"), dtype=np.int64).reshape(len(rows), 3)
    times = np.array(scores, np.float64)
    if times.size > 1 and bool(np.any(times[1:] == times[:-1])):
        # Events of the same moment (a batch sent without timestamps) come from Redis in the members' text order:
        # the later interaction first, as Postgres orders them (-occurred_at, -id), so both paths agree.
        order = np.lexsort((-fields[:, 2], -times))
        fields, times = fields[order], times[order]
    return fields[:, 0].copy(), fields[:, 1].copy(), times


def read_affinity(owner: str, *, now: float | None = None) -> dict[int, float]:
    """Category pk -> interest weight decayed to ``now`` (default: the current time)."""
    return parse_affinity(redis_client.get().zrange(keys.affinity(owner), 0, -1, withscores=True), now=now)


def parse_affinity(rows: list[tuple[bytes, float]], *, now: float | None = None) -> dict[int, float]:
    factor = decay_to(time.time() if now is None else now)
    # A non-finite score (an affinity poisoned before values were bounded) is skipped, never served.
    return {int(category): score * factor for category, score in rows if math.isfinite(score)}


def queue_owner_reads(pipe: Pipeline, owner: str, *, limit: int) -> None:
    """Queue what ``read_history``, ``read_affinity``, ``read_dismissed`` and ``read_had`` read on a caller's
    pipeline, whether the online state is complete and the owner's pending event arrival (six replies: history,
    affinity, complete, dismissed, arrival, had), so they share one round trip with the caller's own commands."""
    pipe.zrevrange(keys.history(owner), 0, limit - 1, withscores=True)
    pipe.zrange(keys.affinity(owner), 0, -1, withscores=True)
    pipe.exists(keys.ONLINE_STATE_COMPLETE)
    pipe.zrange(keys.dismissed(owner), 0, -1, withscores=True)
    pipe.get(keys.arrival(owner))
    pipe.zrange(keys.had(owner), 0, -1)


def parse_dismissed(rows: Sequence[tuple[bytes, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Dismissed items as (item pks, Unix times of dismissal), in pk order."""
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    members, scores = zip(*rows, strict=True)
    pks = np.array(b",".join(members).split(b","), dtype=np.int64)
    order = np.argsort(pks)
    return pks[order], np.array(scores, np.float64)[order]


def read_dismissed(owner: str) -> tuple[np.ndarray, np.ndarray]:
    """The owner's dismissed items (pks, times), in pk order."""
    return parse_dismissed(redis_client.get().zrange(keys.dismissed(owner), 0, -1, withscores=True))


def parse_had(members: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Had items as (item pks, event types), one row per member: the members' digits parsed by numpy in one pass
    (a customer with thousands of purchases costs one split, not a loop)."""
    if not members:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # Members are "<item pk>:<type>" (had_member): two integers each.
    fields = np.array(b":".join(members).split(b":"), dtype=np.int64).reshape(len(members), 2)
    return fields[:, 0].copy(), fields[:, 1].copy()


def read_had(owner: str) -> tuple[np.ndarray, np.ndarray]:
    """The owner's had items (pks, types), oldest first."""
    return parse_had(redis_client.get().zrange(keys.had(owner), 0, -1))


# Delete the arrival only if it is still the one observed: an event that arrived meanwhile keeps its own time.
_ARRIVAL_REFLECTED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# Add the merged session's shown answers to the target's hash and keep it until the later of its own expiry and the
# session's (ARGV[1], ms); a hash the HSET creates has none yet (PTTL -2 before it). One HSET per field: a long
# visit's hash has more fields than Lua's unpack takes.
_SHOWN_MERGED = """
local current = redis.call('PTTL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if current < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 0
"""


def arrivals_reflected(observed: Mapping[str, bytes]) -> None:
    """A list reflecting these owners' events was served: forget the arrivals it observed (owner -> value)."""
    if redis_client.is_cluster():  # a script runs on the node of its key's slot: one call per owner (usually one)
        for owner, value in observed.items():
            key = keys.arrival(owner)
            redis_client.script(_ARRIVAL_REFLECTED, slot_key=key)(keys=[key], args=[value])
        return
    client = redis_client.get()
    script = client.register_script(_ARRIVAL_REFLECTED)
    pipe = client.pipeline(transaction=False)
    for owner, value in observed.items():
        script(keys=[keys.arrival(owner)], args=[value], client=pipe)
    pipe.execute()


def write_shown(answers: Mapping[str, Mapping[str, Sequence[int]]], *, ttl_seconds: int) -> None:
    """Note which items each answer showed its owner (``keys.shown``): owner -> {request id: item pks}, one
    pipeline for them all."""
    pipe = redis_client.get().pipeline(transaction=False)
    for owner, shown in answers.items():
        pipe.hset(keys.shown(owner), mapping={rid: ",".join(map(str, pks)) for rid, pks in shown.items()})
        pipe.expire(keys.shown(owner), ttl_seconds)
    pipe.execute()


def queue_shown_reads(pipe: Pipeline, owners: Sequence[str], request_ids: Sequence[str]) -> None:
    """Queue the HMGET of what earlier answers ``request_ids`` showed each of the owners (one reply per owner): a
    request naming a customer and a session may exclude answers given to the session before the login."""
    for owner in owners:
        pipe.hmget(keys.shown(owner), list(request_ids))


def parse_shown(replies: Sequence[Sequence[bytes | None]]) -> np.ndarray:
    """Item pks of the HMGETs of ``keys.shown`` queued by :func:`queue_shown_reads` (unknown or expired request
    ids: nothing)."""
    found = [value for reply in replies for value in reply if value]
    if not found:
        return np.empty(0, np.int64)
    return np.unique(np.array(b",".join(found).split(b","), dtype=np.int64))


def read_complete() -> bool:
    """Whether Redis still holds the marker the last rebuild wrote (False after FLUSHALL or an empty restart)."""
    return bool(redis_client.get().exists(keys.ONLINE_STATE_COMPLETE))


def read_raw_affinity(owner: str) -> dict[int, float]:
    """Category pk -> stored (landmark-unit) score: for comparisons that must not depend on the clock."""
    rows = redis_client.get().zrange(keys.affinity(owner), 0, -1, withscores=True)
    return {int(category): score for category, score in rows}


def read_cache_version(owner: str) -> int:
    value = redis_client.get().get(keys.cache_version(owner))
    return int(value) if value is not None else 0


def read_item_counters(item_pks: Sequence[int], *, hours: int, now: float) -> np.ndarray:
    """Counts as an int64 array ``(len(COUNTED_TYPES), len(item_pks), hours)``; the last column is the current
    hour. One pipeline of ``4 * hours`` HMGETs."""
    counts = np.zeros((len(COUNTED_TYPES), len(item_pks), hours), dtype=np.int64)
    if not item_pks or hours <= 0:
        return counts
    current = int(now // HOUR)
    fields = [str(pk) for pk in item_pks]
    pipe = redis_client.get().pipeline(transaction=False)
    for name in COUNTED_NAMES:
        for column in range(hours):
            pipe.hmget(keys.item_counter(name, current - hours + 1 + column), fields)
    replies = iter(pipe.execute())
    for t in range(len(COUNTED_NAMES)):
        for column in range(hours):
            values = next(replies)
            if any(values):
                counts[t, :, column] = [int(v) if v is not None else 0 for v in values]
    return counts


def read_counter_cells(*, hours: int, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every non-zero counter cell of the last ``hours`` hours as ``(item_pk, count, type_index, age_hours)``."""
    current = int(now // HOUR)
    pipe = redis_client.get().pipeline(transaction=False)
    for name in COUNTED_NAMES:
        for age in range(hours):
            pipe.hgetall(keys.item_counter(name, current - age))
    replies = iter(pipe.execute())
    pks: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    types: list[np.ndarray] = []
    ages: list[np.ndarray] = []
    for type_index in range(len(COUNTED_NAMES)):
        for age in range(hours):
            bucket: dict[bytes, bytes] = next(replies)
            if not bucket:
                continue
            n = len(bucket)
            pks.append(np.fromiter(map(int, bucket.keys()), dtype=np.int64, count=n))
            counts.append(np.fromiter(map(int, bucket.values()), dtype=np.int64, count=n))
            types.append(np.full(n, type_index, dtype=np.int64))
            ages.append(np.full(n, age, dtype=np.int64))
    if not pks:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    return np.concatenate(pks), np.concatenate(counts), np.concatenate(types), np.concatenate(ages)


def read_item_features_version() -> str | None:
    value = redis_client.get().get(keys.ITEM_FEATURES_VERSION)
    return value.decode() if value is not None else None


def read_item_features() -> tuple[str, bytes] | None:
    """The version token and blob, read together so they always match."""
    pipe = redis_client.atomic(keys.ITEM_FEATURES_BLOB)
    pipe.get(keys.ITEM_FEATURES_VERSION)
    pipe.get(keys.ITEM_FEATURES_BLOB)
    version, blob = pipe.execute()
    if version is None or blob is None:
        return None
    return version.decode(), blob
