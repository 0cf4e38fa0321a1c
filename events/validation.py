"""Validation of events API payloads: the request envelope and each event, in one tight loop over the
events.parsing helpers (a serializer per event would cost more than storing it). No database: unknown items are
found by the ingestion service's bulk lookup."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from events.models import Interaction
from events.parsing import (
    InvalidEvent,
    check_value,
    derive_event_id,
    parse_id,
    parse_time,
    parse_type,
    parse_value,
)
from kernel.validation import json_type_problem, sentence

MAX_BATCH = 1000
REQUEST_ID_MAX = 64
# DRF's key for errors not about one field; repeated so this module does not depend on DRF.
NON_FIELD = "non_field_errors"

Errors = dict[str, list[str]]


class ParsedEvent(NamedTuple):
    """One valid event (a NamedTuple: thousands are built per second)."""

    index: int  # position in the request, for the rejection report
    event_id: str
    customer_id: str  # "" for an anonymous event
    session_id: str  # "" when not sent
    item_id: str
    type: int  # Interaction.Type value
    value: float | None
    occurred_at: datetime
    request_id: str  # "" when not sent
    time_given: bool = True  # False: occurred_at is the arrival time (a retry then has another one)


class Rejection(NamedTuple):
    index: int
    errors: Errors


class InvalidBody(Exception):
    """The request as a whole is unusable (not an object, ``events`` not a list, too many events)."""

    def __init__(self, errors: Errors) -> None:
        super().__init__(errors)
        self.errors = errors


def unpack_body(data: object) -> tuple[list[Any], bool]:
    """The raw events of a request body, and whether it was a batch (``{"events": [...]}``) or a single event."""
    if not isinstance(data, dict):
        raise InvalidBody({NON_FIELD: ['Expected a JSON object: one event, or {"events": [...]}.']})
    if "events" not in data:
        return [data], False
    events = data["events"]
    if not isinstance(events, list):
        raise InvalidBody({"events": ["Expected a list of event objects."]})
    if len(events) > MAX_BATCH:
        raise InvalidBody({"events": [f"At most {MAX_BATCH} events per request; got {len(events)}."]})
    return events, True


def parse_events(raw_events: list[Any], *, now: datetime) -> tuple[list[ParsedEvent], list[Rejection]]:
    parsed: list[ParsedEvent] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(raw_events):
        result = parse_event(raw, index=index, now=now)
        if isinstance(result, Rejection):
            rejected.append(result)
        else:
            parsed.append(result)
    return parsed, rejected


def parse_event(raw: object, *, index: int, now: datetime) -> ParsedEvent | Rejection:
    """Check every field (so the client learns all its mistakes at once); derive ``event_id`` when not sent."""
    if not isinstance(raw, dict):
        return Rejection(index, {NON_FIELD: ["Expected a JSON object."]})
    errors: Errors = {}
    event_id = _text(raw, "event_id", errors, required=False)
    customer_id = _text(raw, "customer_id", errors, required=False)
    session_id = _text(raw, "session_id", errors, required=False)
    if not customer_id and not session_id and "customer_id" not in errors and "session_id" not in errors:
        errors["customer_id"] = ["Either customer_id or session_id is required."]
    item_id = _text(raw, "item_id", errors, required=True)
    request_id = _text(raw, "request_id", errors, required=False, max_length=REQUEST_ID_MAX)

    type_ = 0
    raw_type = raw.get("type")
    if raw_type is None:
        errors["type"] = ["This field is required."]
    elif not isinstance(raw_type, str):
        errors["type"] = ["Must be a string."]
    else:
        try:
            type_ = parse_type(raw_type)
        except InvalidEvent as exc:
            errors["type"] = [_sentence(exc)]

    value: float | None = None
    raw_value = raw.get("value")
    if raw_value is not None:
        # A JSON number only, as every number field of a body (kernel.validation.json_type_problem): not "5", not
        # true (a bool is an int in Python, but true is not a rating). CSV imports parse their text cells instead.
        if (problem := json_type_problem("number", raw_value)) is not None:
            errors["value"] = [sentence(problem)]
        else:
            try:
                value = parse_value(str(raw_value))
            except InvalidEvent as exc:
                errors["value"] = [_sentence(exc)]
    if type_ == Interaction.Type.RATING and value is None and "value" not in errors:
        errors["value"] = ["A rating needs a value."]
    elif "value" not in errors and "type" not in errors:
        try:
            value = check_value(type_, value)
        except InvalidEvent as exc:
            errors["value"] = [_sentence(exc)]

    occurred_at, time_given = now, False
    raw_time = raw.get("occurred_at")
    if isinstance(raw_time, str) and raw_time.strip():
        time_given = True
        try:
            occurred_at = parse_time(raw_time, now=now)
        except InvalidEvent as exc:
            errors["occurred_at"] = [_sentence(exc)]
    elif raw_time is not None and raw_time != "":
        errors["occurred_at"] = ["Must be an ISO 8601 date-time string."]

    if errors:
        return Rejection(index, errors)
    if not event_id:
        # Derived from the content including the time, which defaults to now when not sent: identical events sent
        # at different moments without an event_id or occurred_at are different events, not retries.
        event_id = derive_event_id(
            customer_id, session_id, item_id, type_, value, occurred_at.astimezone(UTC).isoformat(), request_id
        )
    return ParsedEvent(
        index, event_id, customer_id, session_id, item_id, type_, value, occurred_at, request_id, time_given
    )


def _text(raw: dict[str, Any], field: str, errors: Errors, *, required: bool, max_length: int | None = None) -> str:
    value = raw.get(field)
    if value is None:
        if required:
            errors[field] = ["This field is required."]
        return ""
    if not isinstance(value, str):
        errors[field] = ["Must be a string."]
        return ""
    if required and not value.strip():
        errors[field] = ["May not be blank."]
        return ""
    try:
        value = parse_id(value, field, required=False)
    except InvalidEvent as exc:
        errors[field] = [_sentence(exc)]
        return ""
    if max_length is not None and len(value) > max_length:
        errors[field] = [f"Longer than {max_length} characters."]
        return ""
    return value


def _sentence(exc: InvalidEvent) -> str:
    """The parsing helpers' reasons ("longer than 100 characters") as the API's sentences."""
    return exc.reason[:1].upper() + exc.reason[1:] + "."
