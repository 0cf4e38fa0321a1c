"""Monthly range partitions of the big append-only tables (interactions, impressions): create ahead, convert an
unpartitioned table, and retire whole months.

Postgres' declarative partitioning does the work; this module only names the partitions and issues the DDL. A
partition holds one calendar month in UTC, ``<table>_pYYYY_MM``, bounds ``[first of month, first of next)``; the
``<table>_default`` partition catches anything no monthly partition covers (an import of old data, a clock far
ahead), so an insert never fails for want of a partition. Creating a month whose rows already sit in the default
partition moves them in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionedTable:
    table: str
    column: str  # the partition key, a timestamptz


INTERACTIONS = PartitionedTable("events_interaction", "occurred_at")
IMPRESSIONS = PartitionedTable("experiments_impression", "served_at")
TABLES = (INTERACTIONS, IMPRESSIONS)
# Months created ahead of the current one by the beat task (and by the conversion): two months means a missed
# month of beat runs still finds its partition waiting.
MONTHS_AHEAD = 2


def month_start(value: date | datetime) -> date:
    return date(value.year, value.month, 1)


def next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def months(first: date, last: date) -> Iterator[date]:
    """The first days of the months from ``first``'s to ``last``'s, both included."""
    month = month_start(first)
    while month <= last:
        yield month
        month = next_month(month)


def partition_name(spec: PartitionedTable, month: date) -> str:
    return f"{spec.table}_p{month.year:04d}_{month.month:02d}"


def default_name(spec: PartitionedTable) -> str:
    return f"{spec.table}_default"


def _bound(month: date) -> str:
    return f"{month.isoformat()} 00:00:00+00"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Partition:
    name: str
    month: date | None  # None for the default partition
    rows_estimate: int


def partition_list(*, spec: PartitionedTable, conn: BaseDatabaseWrapper | None = None) -> list[Partition]:
    """The table's partitions, oldest month first, the default partition last (with the planner's row estimate)."""
    conn = conn or connection
    with conn.cursor() as cursor:
        cursor.execute(
            """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), greatest(c.reltuples, 0)::bigint
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = %s::regclass""",
            [spec.table],
        )
        rows = cursor.fetchall()
    found: list[Partition] = []
    default: list[Partition] = []
    prefix = spec.table + "_p"
    for name, bound, estimate in rows:
        if bound == "DEFAULT":
            default.append(Partition(name, None, estimate))
        elif name.startswith(prefix):
            year, month = name[len(prefix) :].split("_")
            found.append(Partition(name, date(int(year), int(month), 1), estimate))
    return sorted(found, key=lambda p: p.month or date.min) + default


def is_partitioned(*, spec: PartitionedTable, conn: BaseDatabaseWrapper | None = None) -> bool:
    conn = conn or connection
    with conn.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", [spec.table])
        row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def partition_create(*, spec: PartitionedTable, month: date, conn: BaseDatabaseWrapper | None = None) -> bool:
    """Create the month's partition unless it exists; returns whether it was created.

    Built as a plain table, filled with the month's rows the default partition holds (moved, in this transaction),
    then attached: attaching checks the default partition holds none of the month any more, and builds the
    partition's copies of the parent's indexes and constraints.
    """
    conn = conn or connection
    name = partition_name(spec, month)
    low, high = _bound(month), _bound(next_month(month))
    table, column, default = _q(spec.table), _q(spec.column), _q(default_name(spec))
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        # One creator at a time per table (beat, a migration, an import): the existence check then holds.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"partition:{spec.table}"])
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is not None:
            return False
        cursor.execute(f"CREATE TABLE {_q(name)} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute("SELECT to_regclass(%s)", [default_name(spec)])
        if cursor.fetchone()[0] is not None:
            cursor.execute(
                f"""WITH moved AS (DELETE FROM {default} WHERE {column} >= %s AND {column} < %s RETURNING *)
                    INSERT INTO {_q(name)} SELECT * FROM moved""",  # noqa: S608 (quoted identifiers of constants)
                [low, high],
            )
            if cursor.rowcount:
                logger.info("partition_rows_moved", extra={"partition": name, "rows": cursor.rowcount})
        cursor.execute(f"ALTER TABLE {table} ATTACH PARTITION {_q(name)} FOR VALUES FROM ('{low}') TO ('{high}')")
    logger.info("partition_created", extra={"partition": name})
    return True


def partitions_ensure(
    *,
    first: date | None = None,
    today: date | None = None,
    months_ahead: int = MONTHS_AHEAD,
    tables: tuple[PartitionedTable, ...] = TABLES,
    conn: BaseDatabaseWrapper | None = None,
) -> list[str]:
    """Create every missing monthly partition from ``first``'s month (default: this month) to ``months_ahead``
    months after ``today``'s; returns the names created. Idempotent: the beat task runs it daily."""
    today = today or datetime.now(UTC).date()
    last = month_start(today)
    for _ in range(months_ahead):
        last = next_month(last)
    created = []
    for spec in tables:
        if not is_partitioned(spec=spec, conn=conn):
            continue
        for month in months(first or today, last):
            if partition_create(spec=spec, month=month, conn=conn):
                created.append(partition_name(spec, month))
    return created


def partitions_split_default(
    *, tables: tuple[PartitionedTable, ...] = TABLES, conn: BaseDatabaseWrapper | None = None
) -> list[str]:
    """Give every month that has rows in the default partition its own partition (an import of older data landed
    there); returns the names created. Cheap when the default partition is empty, as it normally is."""
    conn = conn or connection
    created = []
    for spec in tables:
        if not is_partitioned(spec=spec, conn=conn):
            continue
        with conn.cursor() as cursor:
            cursor.execute(
                f"""SELECT DISTINCT date_trunc('month', {_q(spec.column)} AT TIME ZONE 'UTC')::date
                      FROM {_q(default_name(spec))} ORDER BY 1"""  # noqa: S608 (quoted identifiers of constants)
            )
            found = [row[0] for row in cursor.fetchall()]
        for month in found:
            if partition_create(spec=spec, month=month, conn=conn):
                created.append(partition_name(spec, month))
    return created


# --- Indexes built without blocking writes ---------------------------------------------------------------------


def index_create_concurrently(
    *, spec: PartitionedTable, name: str, definition: str, conn: BaseDatabaseWrapper | None = None
) -> list[str]:
    """Create the index ``name`` on the partitioned table without blocking its writes; returns the names of the
    partitions' indexes built. ``definition`` is what follows the table in ``CREATE INDEX``, e.g.
    ``(col) WHERE col IS NOT NULL``.

    A plain ``CREATE INDEX`` on a partitioned table builds every partition's index under a lock that blocks inserts
    (the impression flush would wait for the whole build), and ``CONCURRENTLY`` is refused on a partitioned table. So,
    as Postgres' documentation describes: the index is created on the parent alone (``ON ONLY``: invalid until every
    partition has its own attached; a partition attached meanwhile gets its own built), each partition's is built
    ``CONCURRENTLY`` and attached, and the parent's turns valid with the last. Runs outside a transaction (a
    non-atomic migration). Idempotent: a run that died half-way (an invalid partition index left behind) is finished
    by the next.
    """
    conn = conn or connection
    if conn.in_atomic_block:
        raise RuntimeError("CREATE INDEX CONCURRENTLY cannot run inside a transaction")
    built = []
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE INDEX IF NOT EXISTS {_q(name)} ON ONLY {_q(spec.table)} {definition}")
        for partition in partition_list(spec=spec, conn=conn):
            cursor.execute(
                """SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid
                    WHERE i.inhparent = %s::regclass AND x.indrelid = %s::regclass""",
                [name, partition.name],
            )
            if cursor.fetchone() is not None:
                continue  # attached already: by an earlier run, or built when the partition was attached
            child = f"{name}_{partition.name.removeprefix(spec.table + '_')}"
            cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [child])
            row = cursor.fetchone()
            if row is not None and not row[0]:  # a build that died half-way
                cursor.execute(f"DROP INDEX CONCURRENTLY {_q(child)}")
            cursor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {_q(child)} ON {_q(partition.name)} {definition}")
            cursor.execute(f"ALTER INDEX {_q(name)} ATTACH PARTITION {_q(child)}")
            built.append(child)
            logger.info("partition_index_built", extra={"index": child})
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", [name])
        if not cursor.fetchone()[0]:
            raise RuntimeError(f"index {name} is still invalid: a partition of {spec.table} has no index attached")
    return built


# --- Retention ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunePlan:
    cutoff: datetime
    drop: tuple[str, ...]  # whole partitions entirely before the cutoff's month
    boundary: str | None  # the cutoff's own partition (or the default one): rows before the cutoff are deleted


@dataclass(frozen=True)
class PruneResult:
    dropped: tuple[str, ...]
    rows_deleted: int


def prune_plan(*, spec: PartitionedTable, cutoff: datetime, conn: BaseDatabaseWrapper | None = None) -> PrunePlan:
    """What pruning rows older than ``cutoff`` would do: the monthly partitions wholly before it are dropped;
    the month containing it and the default partition keep their newer rows and lose the older ones."""
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    boundary_month = month_start(cutoff.astimezone(UTC))
    drop: list[str] = []
    boundary = None
    for partition in partition_list(spec=spec, conn=conn):
        if partition.month is None:
            continue
        if partition.month < boundary_month:
            drop.append(partition.name)
        elif partition.month == boundary_month and cutoff.astimezone(UTC) > datetime.combine(
            boundary_month, datetime.min.time(), UTC
        ):
            boundary = partition.name
    return PrunePlan(cutoff=cutoff, drop=tuple(drop), boundary=boundary)


def partitions_prune(
    *,
    spec: PartitionedTable,
    cutoff: datetime,
    conn: BaseDatabaseWrapper | None = None,
    progress: Callable[[str], None] | None = None,
) -> PruneResult:
    """Remove the table's rows older than ``cutoff``: detach and drop each whole month before it (one short
    transaction each, no row-by-row delete), then delete the older rows of the boundary month and of the default
    partition. Raises ``ValueError`` when the table is not partitioned."""
    conn = conn or connection
    if not is_partitioned(spec=spec, conn=conn):
        raise ValueError(f"{spec.table} is not partitioned; run the migrations first")
    plan = prune_plan(spec=spec, cutoff=cutoff, conn=conn)
    say = progress or (lambda message: None)
    dropped = []
    for name in plan.drop:
        with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {_q(spec.table)} DETACH PARTITION {_q(name)}")
            cursor.execute(f"DROP TABLE {_q(name)}")
        dropped.append(name)
        logger.info("partition_dropped", extra={"partition": name})
        say(f"dropped {name}")
    deleted = 0
    for name in [plan.boundary, default_name(spec)]:
        if name is None:
            continue
        with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s)", [name])
            if cursor.fetchone()[0] is None:
                continue
            cursor.execute(f"DELETE FROM {_q(name)} WHERE {_q(spec.column)} < %s", [cutoff])  # noqa: S608 (identifiers of module constants, quoted)
            deleted += cursor.rowcount
            say(f"deleted {cursor.rowcount} rows of {name} before {cutoff.isoformat()}")
    return PruneResult(dropped=tuple(dropped), rows_deleted=deleted)


# --- Conversion of an unpartitioned table (the migrations) ----------------------------------------------------


def _lock_and_describe(cursor: Any, table: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Lock ``table`` for a conversion and read what must be re-created on the new one: its own constraints
    (primary, unique, foreign, exclusion; not those a partition inherits) and its indexes that back no constraint."""
    # Deferred foreign-key checks of rows written earlier in this transaction run now: a table with pending
    # trigger events cannot be dropped.
    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    cursor.execute(f"LOCK TABLE {_q(table)} IN ACCESS EXCLUSIVE MODE")
    cursor.execute(
        """SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'f', 'x') AND conparentid = 0
            ORDER BY conname""",
        [table],
    )
    constraints = cursor.fetchall()
    cursor.execute(
        """SELECT ci.relname, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
            WHERE i.indrelid = %s::regclass
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            ORDER BY ci.relname""",
        [table],
    )
    return constraints, cursor.fetchall()


def table_partition(
    *, spec: PartitionedTable, unique: dict[str, str], conn: BaseDatabaseWrapper, months_ahead: int = MONTHS_AHEAD
) -> int:
    """Convert ``spec.table`` into a table partitioned by month on ``spec.column``, keeping every row, index,
    constraint and foreign key; returns the rows copied. Run inside the migration's transaction.

    ``unique`` renames the unique constraints that must gain the partition key (Postgres requires it in every
    unique constraint of a partitioned table): old name -> new name. The primary key becomes (id, column): ids
    still come from the one identity sequence, so they stay unique across partitions.
    """
    table, old = spec.table, f"{spec.table}_unpartitioned"
    with conn.cursor() as cursor:
        constraints, indexes = _lock_and_describe(cursor, table)
        cursor.execute(f"ALTER TABLE {_q(table)} RENAME TO {_q(old)}")
        cursor.execute(
            f"""CREATE TABLE {_q(table)} (LIKE {_q(old)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE ({_q(spec.column)})"""
        )
        cursor.execute(
            f"SELECT min({_q(spec.column)}), max({_q(spec.column)}) FROM {_q(old)}",  # noqa: S608 (identifiers of module constants, quoted)
        )
        first, last = cursor.fetchone()
        cursor.execute("SELECT (now() AT TIME ZONE 'UTC')::date")
        today = cursor.fetchone()[0]
        horizon = month_start(today)
        for _ in range(months_ahead):
            horizon = next_month(horizon)
        start = month_start(min(first.astimezone(UTC).date(), today) if first else today)
        end = max(horizon, month_start(last.astimezone(UTC).date())) if last else horizon
        for month in months(start, end):
            cursor.execute(
                f"""CREATE TABLE {_q(partition_name(spec, month))} PARTITION OF {_q(table)}
                    FOR VALUES FROM ('{_bound(month)}') TO ('{_bound(next_month(month))}')"""
            )
        cursor.execute(f"CREATE TABLE {_q(default_name(spec))} PARTITION OF {_q(table)} DEFAULT")
        cursor.execute(f"INSERT INTO {_q(table)} SELECT * FROM {_q(old)}")  # noqa: S608 (identifiers of module constants, quoted)
        copied = cursor.rowcount
        cursor.execute(f"DROP TABLE {_q(old)}")
        cursor.execute(f"ALTER TABLE {_q(table)} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, 'id'), coalesce((SELECT max(id) FROM {_q(table)}), 0) + 1, "  # noqa: S608 (identifiers of module constants, quoted)
            "false)",
            [table],
        )
        column = _q(spec.column)
        for name, kind, definition in constraints:
            if kind == "p":
                cursor.execute(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(name)} PRIMARY KEY (id, {column})")
            elif kind == "u":
                if name not in unique:
                    raise ValueError(f"unique constraint {name} of {table} needs a new name with {spec.column}")
                head, _, tail = definition.rpartition(")")
                cursor.execute(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(unique[name])} {head}, {column}){tail}")
            else:
                cursor.execute(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(name)} {definition}")
        for _name, definition in indexes:
            # pg_get_indexdef names the renamed (now dropped) table: "... ON public.<old> USING ...".
            cursor.execute(definition.replace(f" ON public.{old} ", f" ON public.{table} ", 1))
    logger.info("table_partitioned", extra={"table": table, "rows": copied})
    return copied


def table_unpartition(*, spec: PartitionedTable, unique: dict[str, str], conn: BaseDatabaseWrapper) -> int:
    """The reverse of :func:`table_partition` (a migration rolled back): one plain table with the same rows,
    indexes and constraints, the unique constraints without the partition key again (``unique``: old -> new name
    as given to :func:`table_partition`)."""
    table, old = spec.table, f"{spec.table}_partitioned"
    back = {new: old_name for old_name, new in unique.items()}
    with conn.cursor() as cursor:
        constraints, indexes = _lock_and_describe(cursor, table)
        cursor.execute(f"ALTER TABLE {_q(table)} RENAME TO {_q(old)}")
        cursor.execute(
            f"CREATE TABLE {_q(table)} (LIKE {_q(old)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)"
        )
        cursor.execute(f"INSERT INTO {_q(table)} SELECT * FROM {_q(old)}")  # noqa: S608 (identifiers of module constants, quoted)
        copied = cursor.rowcount
        cursor.execute(f"DROP TABLE {_q(old)}")  # its partitions with it
        cursor.execute(f"ALTER TABLE {_q(table)} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, 'id'), coalesce((SELECT max(id) FROM {_q(table)}), 0) + 1, "  # noqa: S608 (identifiers of module constants, quoted)
            "false)",
            [table],
        )
        for name, kind, definition in constraints:
            if kind == "p":
                cursor.execute(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(name)} PRIMARY KEY (id)")
            elif kind == "u":
                head, _, tail = definition.rpartition(")")
                columns = (head + ")").replace(f", {spec.column})", ")")
                cursor.execute(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(back.get(name, name))} {columns}{tail}")
            else:
                cursor.execute(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(name)} {definition}")
        for _name, definition in indexes:
            cursor.execute(
                definition.replace(f" ON ONLY public.{old} ", f" ON public.{table} ", 1).replace(
                    f" ON public.{old} ", f" ON public.{table} ", 1
                )
            )
    return copied
