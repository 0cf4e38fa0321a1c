"""Property-based tests of the parsers every untrusted byte goes through (events API and CSV, items CSV, Redis URLs):
on any input they return a valid value or raise their own error naming the field, never anything else, and valid
values survive the round trip."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from catalog.importing import BadItem, parse_item_row
from events.models import Interaction
from events.parsing import MAX_FUTURE, TYPE_BY_NAME, InvalidEvent, derive_event_id, parse_time, parse_type, parse_value
from kernel import redis_urls

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# Everything Python text can hold, control characters and surrogate-free Unicode included.
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)


def _outcome(parse: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    """(value, None) or (None, the parser's own error); any other exception fails the test."""
    try:
        return parse(*args, **kwargs), None
    except (InvalidEvent, BadItem) as exc:
        return None, exc


# --- events.parsing -----------------------------------------------------------------------------------------


@given(ANY_TEXT)
@example("")
@example("  PURCHASE ")
def test_parse_type_returns_a_known_type_or_rejects_the_field(raw: str) -> None:
    value, error = _outcome(parse_type, raw)
    if isinstance(error, InvalidEvent):
        assert error.field == "type"
        assert raw.strip().lower() not in TYPE_BY_NAME
    else:
        assert value in Interaction.Type.values
        assert TYPE_BY_NAME[raw.strip().lower()] == value


@given(st.sampled_from(list(TYPE_BY_NAME)), st.text(" \t", max_size=3), st.text(" \t", max_size=3), st.booleans())
def test_parse_type_ignores_case_and_surrounding_space(name: str, before: str, after: str, upper: bool) -> None:
    assert parse_type(before + (name.upper() if upper else name) + after) == TYPE_BY_NAME[name]


@given(ANY_TEXT)
@example("nan")
@example("-inf")
@example("1e999")
@example("1_000")
def test_parse_value_is_none_a_finite_float_or_a_rejection(raw: str) -> None:
    value, error = _outcome(parse_value, raw)
    if isinstance(error, InvalidEvent):
        assert error.field == "value"
        return
    if not raw.strip():
        assert value is None
    else:
        assert value is not None
        assert math.isfinite(value)
        assert value == float(raw)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_parse_value_round_trips_every_finite_float(value: float) -> None:
    assert parse_value(repr(value)) == value
    assert parse_value(f" {value!r}\n") == value


# Fixed offsets, as an ISO 8601 string carries (a named zone's non-existent local times would not round-trip).
OFFSETS = st.builds(timezone, st.integers(min_value=-1439, max_value=1439).map(lambda m: timedelta(minutes=m)))
AWARE = st.tuples(
    st.datetimes(min_value=datetime(1990, 1, 2), max_value=datetime(2026, 6, 1, 12, 0), timezones=st.just(UTC)),
    OFFSETS,
).map(lambda pair: pair[0].astimezone(pair[1]))


@given(AWARE)
def test_parse_time_round_trips_times_in_the_accepted_range(moment: datetime) -> None:
    assert parse_time(moment.isoformat(), now=NOW) == moment
    assert parse_time(f" {moment.isoformat()} ", now=NOW) == moment


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2026, 6, 1, 12, 0)))
def test_parse_time_reads_a_time_without_offset_as_utc(naive: datetime) -> None:
    assert parse_time(naive.isoformat(), now=NOW) == naive.replace(tzinfo=UTC)


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=OFFSETS))
@example(datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-23))))
@example(datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=23))))
@example(datetime(1990, 1, 1, 0, 0, tzinfo=timezone(timedelta(minutes=1))))  # 1989 in UTC: the floor is an instant
def test_parse_time_accepts_only_1990_to_an_hour_ahead(moment: datetime) -> None:
    parsed, error = _outcome(parse_time, moment.isoformat(), now=NOW)
    if isinstance(error, InvalidEvent):
        assert error.field == "occurred_at"
        assert moment > NOW + MAX_FUTURE or moment < datetime(1990, 1, 1, tzinfo=UTC)
    else:
        assert parsed == moment
        assert parsed.year >= 1990
        assert parsed <= NOW + MAX_FUTURE


@given(ANY_TEXT)
@example("2024-02-30T10:00:00")
@example("2024-01-01T10:00:00+25:00")
def test_parse_time_never_fails_with_anything_but_a_field_error(raw: str) -> None:
    parsed, error = _outcome(parse_time, raw, now=NOW)
    if isinstance(error, InvalidEvent):
        assert error.field == "occurred_at"
    else:
        assert parsed.tzinfo is not None


# Ids as the API and the CSV importer pass them: stripped, non-empty, at most 100 characters. "\x1f" is left out
# here: see test_derived_event_ids_of_ids_containing_the_separator_collide below.
IDS = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x1f"), max_size=20)
EVENT_FIELDS = st.tuples(
    IDS, IDS, IDS, st.sampled_from(Interaction.Type.values),
    st.none() | st.floats(allow_nan=False, allow_infinity=False), IDS, IDS,
)  # fmt: skip


@given(EVENT_FIELDS)
def test_derived_event_id_is_a_stable_bounded_key(fields: tuple) -> None:
    event_id = derive_event_id(*fields)
    assert event_id == derive_event_id(*fields)
    assert event_id.startswith("d-")
    assert len(event_id) == 34  # fits Interaction.event_id (100)


@given(EVENT_FIELDS, EVENT_FIELDS)
def test_different_events_get_different_derived_ids(one: tuple, other: tuple) -> None:
    assume(one != other)
    assert derive_event_id(*one) != derive_event_id(*other)


def test_derived_event_ids_of_ids_containing_a_separator_do_not_collide() -> None:
    one = derive_event_id("a\x1fb", "c", "sku-1", 1, None, "2024-01-01T00:00:00+00:00")
    other = derive_event_id("a", "b\x1fc", "sku-1", 1, None, "2024-01-01T00:00:00+00:00")
    assert one != other


# --- catalog.importing.parse_item_row ------------------------------------------------------------------------

COLUMNS = ("item_id", "title", "description", "category", "brand", "price", "in_stock", "created_at", "tags")
INDEX = {name: position for position, name in enumerate(COLUMNS)}


@given(st.lists(ANY_TEXT, min_size=len(COLUMNS), max_size=len(COLUMNS)))
@example(["sku", "t", "", "", "", "NaN", "", "", ""])
@example(["sku", "t", "", "", "", "sNaN", "", "", ""])
@example(["sku", "t", "", "", "", "1e999999999", "", "", ""])
@example(["sku", "t", "", "", "", "-0", "", "", ""])
def test_parse_item_row_returns_a_valid_item_or_a_bad_item(cells: list[str]) -> None:
    parsed, error = _outcome(parse_item_row, cells, INDEX, NOW)
    if error is not None:
        assert str(error).split(":")[0] in COLUMNS
        return
    item_id, title, _, category, brand, price, in_stock, created, tags = parsed
    assert 0 < len(item_id) <= 100
    assert 0 < len(title) <= 500
    assert len(category) <= 100
    assert len(brand) <= 100
    assert price is None or (price.is_finite() and Decimal(0) <= price < Decimal("1e10"))
    assert price is None or price == price.quantize(Decimal("0.01"))
    assert isinstance(in_stock, bool)
    assert created.tzinfo is not None
    assert all(tag and len(tag) <= 100 and "|" not in tag for tag in tags)


@given(
    item_id=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=100),
    price=st.decimals(min_value=0, max_value=Decimal("9999999999.99"), places=2),
    in_stock=st.sampled_from(["true", "false", "1", "0", "yes", "no", "", "TRUE"]),
    tags=st.lists(st.text(st.characters(categories=["L"]), min_size=1, max_size=10), max_size=5),
)
def test_parse_item_row_keeps_valid_values(item_id: str, price: Decimal, in_stock: str, tags: list[str]) -> None:
    cells = [item_id, "A title", "", "kitchen", "acme", str(price), in_stock, "2024-01-02T10:00:00", "|".join(tags)]
    parsed = parse_item_row(cells, INDEX, NOW)
    assert parsed[0] == item_id
    assert parsed[5] == price
    assert parsed[6] is (in_stock.lower() not in {"false", "0", "no"})
    assert parsed[7] == datetime(2024, 1, 2, 10, tzinfo=UTC)
    assert parsed[8] == list(dict.fromkeys(tags))  # each tag once, in the order given


# --- kernel.redis_urls --------------------------------------------------------------------------------------

DBS = st.integers(min_value=0, max_value=1000)
HOSTS = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,2}\Z")
TCP_URLS = st.builds(
    lambda scheme, auth, host, port, db: f"{scheme}://{auth}{host}{port}/{db}",
    st.sampled_from(["redis", "rediss"]),
    st.sampled_from(["", "user:secret@", ":secret@"]),
    HOSTS,
    st.sampled_from(["", ":6379", ":7000"]),
    DBS,
)
UNIX_URLS = st.builds(
    lambda path, db: f"unix://{path}?db={db}",
    st.from_regex(r"\A(/[a-z0-9_.-]{1,12}){1,4}\.sock\Z"),
    DBS,
)


@given(TCP_URLS | UNIX_URLS, DBS, DBS)
@settings(max_examples=200)
def test_with_db_sets_only_the_database(url: str, first: int, second: int) -> None:
    moved = redis_urls.with_db(url, first)
    assert redis_urls.db_of(moved) == first
    assert redis_urls.with_db(moved, second) == redis_urls.with_db(url, second)
    assert redis_urls.with_db(url, redis_urls.db_of(url)) == url
    # Host, credentials and socket path are kept.
    assert moved.split("?")[0].rsplit("/", 1)[0] == url.split("?")[0].rsplit("/", 1)[0]


@given(UNIX_URLS, DBS)
def test_celery_url_of_a_unix_socket_names_the_same_socket_and_database(url: str, db: int) -> None:
    path = url.removeprefix("unix://").split("?")[0]
    assert redis_urls.celery_url(url, db) == f"redis+socket://{path}?virtual_host={db}"


@given(TCP_URLS, DBS)
def test_celery_url_of_a_tcp_server_is_the_redis_url_of_that_database(url: str, db: int) -> None:
    assert redis_urls.celery_url(url, db) == redis_urls.with_db(url, db)
