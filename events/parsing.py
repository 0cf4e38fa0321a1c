"""Turn raw event fields into validated values: shared by the CSV importer and the events API. No database."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta

from events.models import Interaction

TYPE_BY_NAME: dict[str, int] = {label: value for value, label in Interaction.Type.choices}
TYPE_NAMES = ", ".join(TYPE_BY_NAME)
MAX_ID_LENGTH = 100
# Clocks differ; an event a few minutes "ahead" is skew, one a day ahead is a bug on the client.
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
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(field, f"longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise InvalidEvent(field, "contains control or unprintable characters")
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
    if value > now + MAX_FUTURE:
        raise InvalidEvent("occurred_at", f"{value.isoformat()} is in the future")
    if value.year < 1990:
        raise InvalidEvent("occurred_at", f"{value.isoformat()} is before 1990")
    return value


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
