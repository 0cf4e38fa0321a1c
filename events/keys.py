"""Every Redis key of the events online state, in one place: a builder and a docstring per key.

An *owner* is whoever a history belongs to, one namespace per principal kind so that no customer id can name a
session's state (or the other way round): ``s:<session_id>`` for anonymous events; a customer is ``c:<external id>``
when the id itself starts with a reserved prefix (``s:`` or ``c:``), else the bare external id. The mapping is
one-to-one (:func:`owner_for` builds it, :func:`parse_owner` inverts it); customers keep their bare id otherwise so
their experiment unit (GrowthBook hashes the storefront's own customer id) and cache versions stay what they were.
docs/events.md lists the same keys; a test keeps the two in step through :data:`KEY_PATTERNS`.
"""

from __future__ import annotations

import hashlib

SESSION_OWNER_PREFIX = "s:"
CUSTOMER_OWNER_PREFIX = "c:"
# A customer id starting with one of these is written with CUSTOMER_OWNER_PREFIX in front (see owner_for).
RESERVED_OWNER_PREFIXES: tuple[str, ...] = (SESSION_OWNER_PREFIX, CUSTOMER_OWNER_PREFIX)

HISTORY_PREFIX = "hist:"
AFFINITY_PREFIX = "aff:"
CACHE_VERSION_PREFIX = "cv:"
COUNTER_PREFIX = "cnt:"
DISMISSED_PREFIX = "dis:"
HAD_PREFIX = "had:"
ARRIVAL_PREFIX = "arrival:"
SHOWN_PREFIX = "shown:"

# The freshness probe's owner (ranking.tasks.freshness_probe): an anonymous session whose id holds a tab inside it
# (not at an end, where it would be stripped), which no client can send (kernel.validation.id_problem refuses it),
# so its state is never anyone's; its events never reach Postgres (the probe writes the online state only): not
# training, not exports, not dashboards.
PROBE_SESSION_ID = "freshness\tprobe"

# Rebuildable from Postgres, so ``rebuild_online_state`` clears them (by SCAN on these prefixes) before rebuilding.
# Cache versions and the item-features version are deliberately absent: resetting a version to an old value could
# make a cache hit an entry written before the reset, so those are only ever moved forward.
REBUILDABLE_PREFIXES: tuple[str, ...] = (
    HISTORY_PREFIX, AFFINITY_PREFIX, COUNTER_PREFIX, DISMISSED_PREFIX, HAD_PREFIX,
)  # fmt: skip


def owner_for(*, customer_id: str, session_id: str) -> str:
    """The owner key of an event: the customer when known, else the anonymous session. The one place an owner
    string is built (Postgres rebuilds build the same in SQL: :data:`OWNER_SQL`)."""
    if customer_id:
        return customer_owner(customer_id)
    return SESSION_OWNER_PREFIX + session_id


def customer_owner(customer_id: str) -> str:
    """The owner of a customer's state: the bare id, or ``c:<id>`` when the id starts with a reserved prefix."""
    if customer_id.startswith(RESERVED_OWNER_PREFIXES):
        return CUSTOMER_OWNER_PREFIX + customer_id
    return customer_id


def is_session_owner(owner: str) -> bool:
    return owner.startswith(SESSION_OWNER_PREFIX)


def parse_owner(owner: str) -> tuple[str, str]:
    """``(customer_id, session_id)`` of an owner string (one of the two is empty): the inverse of :func:`owner_for`."""
    if owner.startswith(SESSION_OWNER_PREFIX):
        return "", owner[len(SESSION_OWNER_PREFIX) :]
    if owner.startswith(CUSTOMER_OWNER_PREFIX):
        return owner[len(CUSTOMER_OWNER_PREFIX) :], ""
    return owner, ""


def owner_sql(customer_column: str, session_column: str) -> str:
    """The SQL expression computing :func:`owner_for` from a customer external-id column (NULL for anonymous
    events) and a session-id column; the rebuild reads owners from Postgres with it. Columns are trusted names."""
    reserved = " OR ".join(f"starts_with({customer_column}, '{prefix}')" for prefix in RESERVED_OWNER_PREFIXES)
    return (
        f"CASE WHEN {customer_column} IS NULL THEN '{SESSION_OWNER_PREFIX}' || {session_column}"
        f" WHEN {reserved} THEN '{CUSTOMER_OWNER_PREFIX}' || {customer_column}"
        f" ELSE {customer_column} END"
    )


def owner_tag(owner: str) -> str:
    """``{<owner>}``: the Redis Cluster hash tag every key of the owner carries, so that the owner's history,
    affinities and cache version share one slot and one MULTI (or Lua script) may touch them together.

    Redis hashes the text between the first ``{`` and the first ``}`` after it; an owner containing ``}`` would cut
    its tag short (an empty tag hashes the whole key, scattering the owner's keys), so such an owner is tagged by a
    digest and named in full after it: ``{<sha1>}<owner>``. Other owners never contain ``}``, so the two forms never
    meet.
    """
    if "}" in owner:
        return "{" + hashlib.sha1(owner.encode(), usedforsecurity=False).hexdigest() + "}" + owner
    return "{" + owner + "}"


def history(owner: str) -> str:
    """``hist:{<owner>}`` sorted set: the owner's latest events (at most ``online.HISTORY_LENGTH``).

    Member ``<item_pk>:<type>:<interaction_pk>``, score the event's Unix time: a sorted set rather than a list so
    late events land in time order, a merge is one ZUNIONSTORE, and re-adding an event (retry, rebuild) is a
    no-op. Anonymous sessions' keys expire after ``online.SESSION_TTL_SECONDS`` without events.
    """
    return HISTORY_PREFIX + owner_tag(owner)


def affinity(owner: str) -> str:
    """``aff:{<owner>}`` sorted set: category pk -> interest weight, forward-decayed.

    Scores are stored multiplied by ``2 ** ((t - landmark) / half_life)`` so adding an event is one ZINCRBY and
    nothing is ever rewritten to age it; the reader scales by ``2 ** (-(now - landmark) / half_life)``.
    """
    return AFFINITY_PREFIX + owner_tag(owner)


def cache_version(owner: str) -> str:
    """``cv:{<owner>}`` integer: bumped (INCR) by every newly stored event of the owner and by a session merge.

    Serving cache keys include it, so a new event makes the owner's cached recommendations unreachable at once.
    Never deleted by a rebuild (only bumped); anonymous sessions' versions expire with their history.
    """
    return CACHE_VERSION_PREFIX + owner_tag(owner)


def dismissed(owner: str) -> str:
    """``dis:{<owner>}`` sorted set: item pk -> Unix time of the owner's latest ``dismiss`` ("not interested").

    Serving never shows these items to the owner again and demotes their nearest neighbours for a while (a penalty
    decaying with the dismissal's age). Dismissals are not history entries (they are no interest); rebuilt from
    Postgres like the history, and expiring with the owner's other keys.
    """
    return DISMISSED_PREFIX + owner_tag(owner)


def had(owner: str) -> str:
    """``had:{<owner>}`` sorted set: what the owner already has, member ``<item_pk>:<type>`` for each item they
    bought (``purchase``) or rated (``rating``), score the Unix time of the latest such event.

    Serving leaves these items out of personal lists (``VariantConfig.exclude_purchased`` / ``exclude_rated``)
    over the owner's whole history, not only the latest ``online.HISTORY_LENGTH`` events the history keeps: at most
    ``online.HAD_LENGTH`` members (the newest). Written with the history (``ZADD GT``), moved by a session merge,
    deleted by erasure, rebuilt from Postgres and expiring with the owner's other keys.
    """
    return HAD_PREFIX + owner_tag(owner)


def arrival(owner: str) -> str:
    """``arrival:{<owner>}`` string: the Unix time the oldest event not yet reflected in a served list arrived.

    Written (SET NX, so the first unreflected event's time stays) with every accepted event; the first list
    computed after it observes ``now - arrival`` into ``recsys_event_to_list_seconds`` and deletes it (only if
    unchanged). Expires after an hour: an owner who never asks for a list again is not "stale".
    """
    return ARRIVAL_PREFIX + owner_tag(owner)


def shown(owner: str) -> str:
    """``shown:{<owner>}`` hash: request id -> comma-separated item pks that answer showed this owner.

    Written by serving for each personal list; ``exclude_request_ids`` reads it to leave out what earlier answers
    of the session showed. Expires ``events.online.SHOWN_TTL_SECONDS`` after the last write (a page visit); a
    session merge copies it to the customer.
    """
    return SHOWN_PREFIX + owner_tag(owner)


def item_counter(type_name: str, hour: int) -> str:
    """``cnt:<type>:<hour>`` hash: item pk -> number of ``type`` events in that hour (``hour`` = Unix time // 3600).

    Types: view, click, add_to_cart, purchase. Each bucket expires ``online.COUNTER_RETENTION_SECONDS`` after
    its hour ends, so trending and CTR read at most eight days back.
    """
    return f"{COUNTER_PREFIX}{type_name}:{hour}"


ITEM_FEATURES_BLOB = "feat:{items}:blob"
"""``feat:{items}:blob`` bytes: the folded per-item online features, one numpy ``.npz`` (see events.features).

Written by ``fold_item_counters`` together with :data:`ITEM_FEATURES_VERSION`, in one MULTI (one hash tag,
``{items}``, so one slot on a cluster).
"""

ITEM_FEATURES_VERSION = "feat:{items}:version"
"""``feat:{items}:version`` string: a fresh token on every fold; web processes re-read the blob only when it changes.

A token, not a counter, so that a Redis that lost its data can never repeat a version a process has cached.
"""

REBUILD_LOCK = "lock:{online}:rebuild"
"""``lock:{online}:rebuild``: held while ``rebuild_online_state`` runs, so two rebuilds never interleave."""

ONLINE_STATE_COMPLETE = "online:{online}:complete:v4"
"""``online:{online}:complete:v4`` string: the Unix time the last ``rebuild_online_state`` finished.

The suffix is the format of the online state: it moves when owners or keys change shape (v2: one owner namespace
per principal kind; v3: keys carry Redis Cluster hash tags; v4: the had set, :func:`had`, which only a rebuild fills
with what owners bought or rated before the upgrade), so an install upgraded in place finds no marker, serves
from Postgres meanwhile and queues the rebuild that rewrites every owner's state in the new format (older markers are
in :data:`LEGACY_COMPLETE_MARKERS`, deleted by the rebuild).

Deleted when a rebuild starts and written when it ends; nothing else writes it. A Redis that lost its data (FLUSHALL,
a restart without its append-only file) has lost this key too, so serving then reads histories from Postgres, marks
its lists degraded and asks for a rebuild (:data:`REBUILD_REQUESTED`).
"""

NODE_SENTINELS = "online:{online}:node-sentinels"
"""``online:{online}:node-sentinels`` (Redis Cluster only): the names of one small key per master that the last rebuild
wrote (``online:{node-<n>}:sentinel``, a tag hashing to a slot of that master). A master that restarts empty loses
its sentinel with the owners' state in its slots; serving processes look for them every few seconds and, when one is
gone, delete :data:`ONLINE_STATE_COMPLETE`, so the loss is noticed as on a single Redis (events.online)."""

IMPORT_REBUILD_PENDING = "online:{online}:import-pending"
"""``online:{online}:import-pending``: set by ``import_events`` before its first batch and deleted once its rebuild
of the online state ended: an import killed between the two leaves it, so its re-run (which stores nothing new)
still rebuilds. Expires after a week."""

LEGACY_COMPLETE_MARKERS: tuple[str, ...] = ("online:complete", "online:complete:v2", "online:{online}:complete:v3")

REBUILD_REQUESTED = "lock:{online}:rebuild-requested"
"""``lock:{online}:rebuild-requested``: set (NX, expiring) by whoever queues the rebuild task for a lost online state,
so a burst of requests queues it once (value ``1``); held by a running rebuild with a short expiry its lock's
heartbeat renews (value: that rebuild's token), and deleted when a rebuild ends, however it ends, unless another
rebuild (one that took the lock this one lost) holds it by then. Shares the tag ``{online}`` with
:data:`ONLINE_STATE_COMPLETE`: one Lua script reads the one and sets the other."""


# Pattern -> the builder documenting it; docs/events.md names every pattern (tests/events checks that).
KEY_PATTERNS: dict[str, str] = {
    "hist:{<owner>}": "history",
    "aff:{<owner>}": "affinity",
    "cv:{<owner>}": "cache_version",
    "dis:{<owner>}": "dismissed",
    "had:{<owner>}": "had",
    "arrival:{<owner>}": "arrival",
    "shown:{<owner>}": "shown",
    "cnt:<type>:<hour>": "item_counter",
    "feat:{items}:blob": "ITEM_FEATURES_BLOB",
    "feat:{items}:version": "ITEM_FEATURES_VERSION",
    "lock:{online}:rebuild": "REBUILD_LOCK",
    "online:{online}:complete:v4": "ONLINE_STATE_COMPLETE",
    "lock:{online}:rebuild-requested": "REBUILD_REQUESTED",
}
