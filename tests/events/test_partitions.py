"""Interactions and impressions partitioned by month on the real Postgres: the migration's partitions, rows landing
in the right month, idempotency across partitions, creation ahead, retention, and the conversion of an
unpartitioned table with rows."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection

from catalog.models import Item
from events import partitions
from events.management.commands.prune_interactions import parse_cutoff
from events.models import Interaction
from events.services import RETRY_WINDOW, event_ingest_batch
from experiments.models import Impression
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
THIS_MONTH = partitions.month_start(NOW)


def months_back(count: int) -> dt.date:
    month = THIS_MONTH
    for _ in range(count):
        month = (month - dt.timedelta(days=1)).replace(day=1)
    return month


def at(month: dt.date, day: int = 10) -> dt.datetime:
    return dt.datetime(month.year, month.month, day, 12, tzinfo=dt.UTC)


def partition_of(table: str, where: str, params: list) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE {where}", params)  # noqa: S608
        return cursor.fetchone()[0]


def event(event_id: str, occurred_at: dt.datetime | None) -> dict:
    body = {"event_id": event_id, "session_id": "s1", "item_id": "I1", "type": "view"}
    if occurred_at is not None:
        body["occurred_at"] = occurred_at.isoformat()
    return body


@pytest.fixture
def item() -> None:
    ItemFactory(external_id="I1")


def names(spec: partitions.PartitionedTable) -> list[str]:
    return [partition.name for partition in partitions.partition_list(spec=spec)]


# --- What the migrations built --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", partitions.TABLES, ids=lambda spec: spec.table)
def test_migration_partitions_the_table_by_month_with_a_default(spec: partitions.PartitionedTable) -> None:
    assert partitions.is_partitioned(spec=spec)
    found = names(spec)
    ahead = [THIS_MONTH, partitions.next_month(THIS_MONTH), partitions.next_month(partitions.next_month(THIS_MONTH))]
    for month in ahead:
        assert partitions.partition_name(spec, month) in found
    assert found[-1] == partitions.default_name(spec)


def test_primary_and_unique_keys_include_the_partition_key() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                WHERE conrelid = 'events_interaction'::regclass AND contype IN ('p', 'u') ORDER BY conname"""
        )
        constraints = dict(cursor.fetchall())
    assert constraints["interaction_event_time_unique"] == "UNIQUE (event_id, occurred_at)"
    assert constraints["events_interaction_pkey"] == "PRIMARY KEY (id, occurred_at)"


def _attached_indexes(parent_index: str) -> dict[str, bool]:
    """The tables holding a partition index attached to ``parent_index``, with whether it is valid."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT x.indrelid::regclass::text, x.indisvalid FROM pg_inherits i
                 JOIN pg_index x ON x.indexrelid = i.inhrelid
                WHERE i.inhparent = %s::regclass""",
            [parent_index],
        )
        return dict(cursor.fetchall())


def _index_valid(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", [name])
        return bool(cursor.fetchone()[0])


def test_the_customer_unit_index_covers_every_partition_present_and_future() -> None:
    """Built partition by partition without blocking the flush (experiments migration 0008) and valid on the parent,
    so a month created later gets its own when attached."""
    assert _index_valid("impression_customer_unit")
    assert _attached_indexes("impression_customer_unit") == dict.fromkeys(names(partitions.IMPRESSIONS), True)
    today = partitions.next_month(partitions.next_month(THIS_MONTH))
    assert partitions.partitions_ensure(today=today, tables=(partitions.IMPRESSIONS,))
    assert _attached_indexes("impression_customer_unit") == dict.fromkeys(names(partitions.IMPRESSIONS), True)


_SCRATCH = partitions.PartitionedTable("scratch_partitioned", "at")


@pytest.fixture
def scratch_table() -> Iterator[None]:
    """A small partitioned table of its own (outside any transaction: CONCURRENTLY needs that), dropped after."""
    with connection.cursor() as cursor:
        cursor.execute(
            'CREATE TABLE scratch_partitioned (id bigint, "at" timestamptz, v uuid) PARTITION BY RANGE ("at")'
        )
        for month in (THIS_MONTH, partitions.next_month(THIS_MONTH)):
            cursor.execute(
                f"""CREATE TABLE {partitions.partition_name(_SCRATCH, month)} PARTITION OF scratch_partitioned
                    FOR VALUES FROM ('{month}') TO ('{partitions.next_month(month)}')"""
            )
        cursor.execute("CREATE TABLE scratch_partitioned_default PARTITION OF scratch_partitioned DEFAULT")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE scratch_partitioned")


@pytest.mark.django_db(transaction=True)
def test_an_index_built_concurrently_is_finished_by_a_second_run(scratch_table: None) -> None:
    """A build that died half-way (its partition index left invalid, the other partitions not built) is finished by
    running it again; a run after that builds nothing."""
    definition = "(v) WHERE v IS NOT NULL"
    this_month = partitions.partition_name(_SCRATCH, THIS_MONTH)
    child = "scratch_v_" + this_month.removeprefix(_SCRATCH.table + "_")
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE INDEX scratch_v ON ONLY {_SCRATCH.table} {definition}")
        # What a concurrent build that fails leaves behind: an invalid index (here, unique over duplicates).
        cursor.execute(f"INSERT INTO {this_month} VALUES (1, now(), %s), (2, now(), %s)", [uuid.UUID(int=1)] * 2)  # noqa: S608
        with pytest.raises(IntegrityError):
            cursor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {child} ON {this_month} {definition}")
    assert not _index_valid(child)

    built = partitions.index_create_concurrently(spec=_SCRATCH, name="scratch_v", definition=definition)

    assert len(built) == 3
    assert _index_valid("scratch_v")
    assert _attached_indexes("scratch_v") == dict.fromkeys(names(_SCRATCH), True)
    assert partitions.index_create_concurrently(spec=_SCRATCH, name="scratch_v", definition=definition) == []


def test_an_index_is_not_built_concurrently_inside_a_transaction() -> None:
    with pytest.raises(RuntimeError, match="inside a transaction"):
        partitions.index_create_concurrently(spec=partitions.IMPRESSIONS, name="x", definition="(customer_unit)")


# --- Rows land in their month ---------------------------------------------------------------------------------


def test_events_land_in_their_months_partition_and_older_ones_in_the_default(item: None) -> None:
    old = at(months_back(14))
    result = event_ingest_batch(events=[event("now", NOW - dt.timedelta(minutes=1)), event("old", old)])
    assert result.accepted == 2
    assert partition_of("events_interaction", "event_id = %s", ["now"]) == partitions.partition_name(
        partitions.INTERACTIONS, partitions.month_start(NOW - dt.timedelta(minutes=1))
    )
    assert partition_of("events_interaction", "event_id = %s", ["old"]) == "events_interaction_default"
    # The ORM sees one table: a lookup by Django's primary key works across partitions.
    row = Interaction.objects.get(event_id="old")
    assert Interaction.objects.get(pk=row.pk).occurred_at == old


def test_creating_a_month_moves_its_rows_out_of_the_default_partition(item: None) -> None:
    month = months_back(14)
    event_ingest_batch(events=[event("a", at(month, 3)), event("b", at(month, 20)), event("c", at(months_back(15)))])
    assert partitions.partitions_split_default(tables=(partitions.INTERACTIONS,)) == [
        partitions.partition_name(partitions.INTERACTIONS, months_back(15)),
        partitions.partition_name(partitions.INTERACTIONS, month),
    ]
    name = partitions.partition_name(partitions.INTERACTIONS, month)
    assert partition_of("events_interaction", "event_id = %s", ["a"]) == name
    assert partition_of("events_interaction", "event_id = %s", ["b"]) == name
    assert Interaction.objects.count() == 3
    # Idempotent: nothing left to split.
    assert partitions.partitions_split_default(tables=(partitions.INTERACTIONS,)) == []


def test_partitions_ensure_creates_the_coming_months_once() -> None:
    # Two months on, the migration's partitions end with that month: the two after it are created.
    today = partitions.next_month(partitions.next_month(THIS_MONTH))
    created = partitions.partitions_ensure(today=today)
    coming = [partitions.next_month(today), partitions.next_month(partitions.next_month(today))]
    assert created == [partitions.partition_name(spec, month) for spec in partitions.TABLES for month in coming]
    assert partitions.partitions_ensure(today=today) == []


# --- Idempotency across partitions ----------------------------------------------------------------------------


def test_a_resent_event_is_stored_once(item: None) -> None:
    when = NOW - dt.timedelta(hours=1)
    assert event_ingest_batch(events=[event("e1", when)]).accepted == 1
    again = event_ingest_batch(events=[event("e1", when)])
    assert (again.accepted, again.duplicates) == (0, 1)
    assert Interaction.objects.filter(event_id="e1").count() == 1


def test_a_retry_without_occurred_at_is_stored_once_though_its_time_differs(item: None) -> None:
    # Without occurred_at the arrival time is used: the retry carries another time, maybe in another month.
    first = event_ingest_batch(events=[event("e2", None)], received_at=NOW - RETRY_WINDOW + dt.timedelta(hours=1))
    retry = event_ingest_batch(events=[event("e2", None)], received_at=NOW)
    assert (first.accepted, retry.accepted, retry.duplicates) == (1, 0, 1)
    assert Interaction.objects.filter(event_id="e2").count() == 1


def test_an_event_id_reused_beyond_the_retry_window_at_another_time_is_a_new_event(item: None) -> None:
    # The documented bound (docs/events.md): only this window is searched for the same id at another time.
    event_ingest_batch(events=[event("e3", None)], received_at=NOW - RETRY_WINDOW - dt.timedelta(hours=1))
    assert event_ingest_batch(events=[event("e3", None)], received_at=NOW).accepted == 1
    assert Interaction.objects.filter(event_id="e3").count() == 2


def test_a_replayed_impression_batch_is_stored_once() -> None:
    served = NOW - dt.timedelta(minutes=5)
    for _ in range(2):
        Impression.objects.bulk_create(
            [Impression(request_id="r1", served_at=served, surface="home", session_id="s", item_pks=[1, 2])],
            ignore_conflicts=True,
        )
    assert Impression.objects.filter(request_id="r1").count() == 1
    assert partition_of("experiments_impression", "request_id = %s", ["r1"]) == partitions.partition_name(
        partitions.IMPRESSIONS, partitions.month_start(served)
    )


# --- Retention ------------------------------------------------------------------------------------------------


@pytest.fixture
def three_old_months(item: None) -> list[dt.date]:
    old = [months_back(16), months_back(15), months_back(14)]
    events = [event(f"{month:%Y-%m}-{day}", at(month, day)) for month in old for day in (5, 25)]
    events.append(event("recent", NOW - dt.timedelta(days=1)))
    assert event_ingest_batch(events=events).accepted == 7
    partitions.partitions_split_default(tables=(partitions.INTERACTIONS,))
    Impression.objects.create(request_id="old", served_at=at(old[0]), surface="home", session_id="s")
    return old


def test_prune_drops_whole_months_and_trims_the_boundary_month(three_old_months: list[dt.date]) -> None:
    oldest, middle, boundary = three_old_months
    out = StringIO()
    call_command("prune_interactions", "--older-than", at(boundary, 15).date().isoformat(), stdout=out)
    left = names(partitions.INTERACTIONS)
    assert partitions.partition_name(partitions.INTERACTIONS, oldest) not in left
    assert partitions.partition_name(partitions.INTERACTIONS, middle) not in left
    assert partitions.partition_name(partitions.INTERACTIONS, boundary) in left
    assert sorted(Interaction.objects.values_list("event_id", flat=True)) == [f"{boundary:%Y-%m}-25", "recent"]
    assert "dropped 2 partitions, deleted 1 rows" in out.getvalue()
    # Impressions were not asked for: untouched.
    assert Impression.objects.filter(request_id="old").exists()
    assert partitions.partition_name(partitions.IMPRESSIONS, THIS_MONTH) in names(partitions.IMPRESSIONS)


def test_prune_dry_run_changes_nothing(three_old_months: list[dt.date]) -> None:
    before = names(partitions.INTERACTIONS)
    out = StringIO()
    call_command("prune_interactions", "--older-than", "300d", "--dry-run", stdout=out)
    assert names(partitions.INTERACTIONS) == before
    assert Interaction.objects.count() == 7
    assert f"would drop {partitions.partition_name(partitions.INTERACTIONS, three_old_months[0])}" in out.getvalue()


def test_prune_impressions_when_asked(three_old_months: list[dt.date]) -> None:
    call_command(
        "prune_interactions", "--older-than", "100d", "--tables", "interactions,impressions", stdout=StringIO()
    )
    assert not Impression.objects.filter(request_id="old").exists()
    assert list(Interaction.objects.values_list("event_id", flat=True)) == ["recent"]
    # The current and coming months are never touched.
    assert partitions.partition_name(partitions.INTERACTIONS, THIS_MONTH) in names(partitions.INTERACTIONS)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--older-than", "soon"], "--older-than: 'soon' is neither a duration"),
        (["--older-than", "0d"], "--older-than: the duration must be positive"),
        (["--older-than", "2999-01-01"], "is in the future"),
        (["--older-than", "30d", "--tables", "orders"], "--tables: unknown orders"),
    ],
)
def test_prune_refuses_bad_arguments_clearly(arguments: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        call_command("prune_interactions", *arguments, stdout=StringIO())


def test_parse_cutoff_durations_and_dates() -> None:
    now = dt.datetime(2026, 12, 5, 6, 0, tzinfo=dt.UTC)
    assert parse_cutoff("10d", now=now) == now - dt.timedelta(days=10)
    assert parse_cutoff("2w", now=now) == now - dt.timedelta(days=14)
    assert parse_cutoff("2025-01-01", now=now) == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    assert parse_cutoff("2025-01-01T06:00:00+01:00", now=now) == dt.datetime(2025, 1, 1, 5, tzinfo=dt.UTC)


# --- The migration from an unpartitioned table ----------------------------------------------------------------

_UNIQUE = {"interaction_event_id_unique": "interaction_event_time_unique"}


def test_converting_an_unpartitioned_table_with_rows_keeps_every_row(item: None) -> None:
    # Back to today's plain table (the migration's reverse), with rows over many months, then forward again.
    partitions.table_unpartition(spec=partitions.INTERACTIONS, unique=_UNIQUE, conn=connection)
    assert not partitions.is_partitioned(spec=partitions.INTERACTIONS)
    months = [months_back(count) for count in range(30, -1, -3)]
    item_pk = Item.objects.get(external_id="I1").pk
    Interaction.objects.bulk_create(
        Interaction(event_id=f"m{i}", session_id="s1", item_id=item_pk, type=1, occurred_at=at(month))
        for i, month in enumerate(months)
    )
    before = sorted(Interaction.objects.values_list("id", "event_id", "occurred_at"))

    copied = partitions.table_partition(spec=partitions.INTERACTIONS, unique=_UNIQUE, conn=connection)

    assert copied == len(months)
    assert sorted(Interaction.objects.values_list("id", "event_id", "occurred_at")) == before
    found = names(partitions.INTERACTIONS)
    for i, month in enumerate(months):
        assert partition_of("events_interaction", "event_id = %s", [f"m{i}"]) == partitions.partition_name(
            partitions.INTERACTIONS, month
        )
    # Every month from the oldest row's to two ahead, and the default.
    assert found[0] == partitions.partition_name(partitions.INTERACTIONS, months[0])
    assert found[-1] == "events_interaction_default"
    # The identity continues after the copied ids, and the idempotency key holds on the new table.
    after = event_ingest_batch(events=[event("m0", at(months[0])), event("new", NOW - dt.timedelta(minutes=1))])
    assert (after.accepted, after.duplicates) == (1, 1)
    assert Interaction.objects.get(event_id="new").id > max(row[0] for row in before)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'events_interaction' ORDER BY indexname",
        )
        indexes = {row[0] for row in cursor.fetchall()}
    assert {"interaction_customer_recent", "interaction_occurred_brin", "interaction_session_recent"} <= indexes


def test_a_duration_reaching_before_the_year_1_is_a_clear_error() -> None:
    for raw in ("99999999d", f"{10**21}d"):
        with pytest.raises(ValueError, match="before the year 1"):
            parse_cutoff(raw, now=dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    with pytest.raises(ValueError, match="before the year 1"):
        parse_cutoff("0001-01-01T00:00:00+05:00", now=dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    # An eleventh tester: the other end said "before the year 1" too.
    with pytest.raises(ValueError, match="past the year 9999"):
        parse_cutoff("9999-12-31T23:59:59-14:00", now=dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
