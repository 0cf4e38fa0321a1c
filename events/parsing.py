"""Turn raw event fields into validated values: shared by the CSV importer and the events API. No database."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta

from events.features import RATING_MAX, RATING_MIN
from events.models import Interaction
from kernel.validation import id_problem

TYPE_BY_NAME: dict[str, int] = {label: value for value, label in Interaction.Type.choices}
TYPE_NAMES = ", ".join(TYPE_BY_NAME)
MAX_ID_LENGTH = 100
# The documented ranges of `value` (docs/events.md): a rating is a score from 0 to 10; a quantity or revenue is
# within ±1e9. Anything else is refused: one 1e308 rating once made a customer's affinity infinite in Redis and
# overflowed the rebuild's affinity query.
VALUE_MAX = 1e9
# The times an event may carry (docs/events.md): from EARLIEST to MAX_FUTURE after it was received. Clocks differ;
# an event a few minutes "ahead" is skew, one a day ahead is a bug on the client. The bounds are also what the
# readers' arithmetic can hold: the online state's forward decay (events.features) overflows a float past about
# 2110 and underflows to nothing before about 1940, which failed a whole rebuild. Every writer applies it (the API,
# the imports, the admin's form); the database does not (a CHECK would be re-validated on old rows at every
# partition split: docs/reliability.md, a thirteenth tester), so readers clamp rows stored before it (event_time_sql).
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(hours=1)


class InvalidEvent(ValueError):
    """The field and the reason, for a 400 body or an import line report."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_type(raw: str) -> int:
    value = TYPE_BY_NAME.get(raw.strip().lower())
    if value is None:
        raise InvalidEvent("type", f"{raw!r} is not one of {TYPE_NAMES}")
    return value


def parse_id(raw: str, field: str, *, required: bool) -> str:
    value = raw.strip()
    if not value:
        if required:
            raise InvalidEvent(field, "is required")
        return ""
    # The one id rule of every entry point (kernel.validation), after the event formats' stripping.
    problem = id_problem(value)
    if problem is not None:
        raise InvalidEvent(field, problem)
    return value


def parse_value(raw: str) -> float | None:
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidEvent("value", f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidEvent("value", "must be a finite number")
    return value


def check_value(type_: int, value: float | None) -> float | None:
    """``value`` within its documented range for events of ``type_`` (a rating 0-10, otherwise ±1e9)."""
    if value is None:
        return None
    if type_ == Interaction.Type.RATING:
        if not RATING_MIN <= value <= RATING_MAX:
            raise InvalidEvent("value", f"a rating must be between {RATING_MIN:g} and {RATING_MAX:g}")
    elif not -VALUE_MAX <= value <= VALUE_MAX:
        raise InvalidEvent("value", f"must be between {-VALUE_MAX:g} and {VALUE_MAX:g}")
    return value


def parse_time(raw: str, *, now: datetime) -> datetime:
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidEvent("occurred_at", f"{raw!r} is not an ISO 8601 date-time") from None
    return check_time(value, now=now)


def check_time(value: datetime, *, now: datetime) -> datetime:
    if value.tzinfo is None:
        # A time without an offset is read as UTC, documented in the README's event schema.
        value = value.replace(tzinfo=UTC)
    try:
        # In UTC: Python takes offsets up to ±23:59, Postgres up to ±15:59; and the floor below is an instant.
        value = value.astimezone(UTC)
    except OverflowError:  # past year 9999 or before year 1 in UTC: beyond either bound
        edge = "in the future" if value.year > EARLIEST.year else f"before {EARLIEST.year}"
        raise InvalidEvent("occurred_at", f"{value.isoformat()} is {edge}") from None
    if value > now + MAX_FUTURE:
        raise InvalidEvent("occurred_at", f"{value.isoformat()} is in the future")
    if value < EARLIEST:
        raise InvalidEvent("occurred_at", f"{value.isoformat()} is before {EARLIEST.year}")
    return value


def event_time_sql(alias: str) -> str:
    """SQL for the time the interaction ``alias`` counts at in the readers that do arithmetic on it (the rebuild of
    the online state, training): its ``occurred_at`` within the rule above, measured from its ``received_at``.

    The identity for every row stored under the rule. A row stored before the database held it (a time typed into
    the admin's interaction form, which did not apply it) counts at the nearest time the rule allows: year 9999 an
    hour after it was received, as a client's skewed clock is tolerated, year 1 in 1990. Unclamped, one such row
    failed every ``rebuild_online_state`` ("value out of range: overflow") and moved a small shop's training "now"
    to year 9999, decaying every real event to nothing.
    """
    return (
        f"least(greatest({alias}.occurred_at, '{EARLIEST.isoformat()}'::timestamptz), "
        f"{alias}.received_at + interval '{int(MAX_FUTURE.total_seconds())} seconds')"
    )


def derive_event_id(
    customer_id: str,
    session_id: str,
    item_id: str,
    type_: int,
    value: float | None,
    occurred_at: str,
    extra: str = "",
) -> str:
    """An idempotency key from the event's content, so re-sending or re-importing the same event stores it once."""
    # JSON keeps the fields apart whatever characters an id holds (a separator character could be in an id).
    material = json.dumps([customer_id, session_id, item_id, type_, repr(value), occurred_at, extra])
    return "d-" + hashlib.blake2b(material.encode(), digest_size=16).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)
