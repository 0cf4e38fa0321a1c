"""CSV row formats for ``import_events``: the generic format and the UCI Online Retail export. No database.

Each adapter turns a row into an :data:`EventRow` tuple, raises :class:`InvalidEvent` for a bad row (reported with
its line number) or :class:`SkipRow` for a row the format says is not an interaction (counted by reason).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from events.models import Interaction
from events.parsing import (
    InvalidEvent,
    check_time,
    check_value,
    derive_event_id,
    parse_id,
    parse_time,
    parse_type,
    parse_value,
)
from kernel.csvimport import decimal_comma_read, number_hint

# (event_id, customer_id, session_id, item_id, type, value, occurred_at)
EventRow = tuple[str, str, str, str, int, float | None, datetime]
Adapter = Callable[[list[str]], EventRow]


_has_digit = re.compile(r"\d").search


class SkipRow(Exception):
    """Not an error: the row is deliberately not imported (e.g. a cancellation)."""


GENERIC_REQUIRED = {"customer_id", "item_id", "type"}
GENERIC_OPTIONAL = {"event_id", "value", "occurred_at", "session_id"}

ONLINE_RETAIL_COLUMNS = {
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country",
}  # fmt: skip


def _number(raw: str, column: str, *, decimal_comma: bool) -> float | None:
    """A number cell, a bad one reported under its column's name; ``decimal_comma``: written ``1.234,5``."""
    try:
        return parse_value(decimal_comma_read(raw) if decimal_comma else raw)
    except InvalidEvent as exc:
        hint = "" if decimal_comma else number_hint(raw)
        raise InvalidEvent(column, exc.reason + hint) from None


def generic_adapter(index: dict[str, int], now: datetime, *, decimal_comma: bool = False) -> Adapter:
    """``event_id,customer_id,item_id,type,value,occurred_at,session_id``; occurred_at defaults to the import time
    (the derived event id then uses the empty field, so a re-import is still a no-op)."""
    i_event = index.get("event_id")
    i_customer, i_item, i_type = index["customer_id"], index["item_id"], index["type"]
    i_value, i_time, i_session = index.get("value"), index.get("occurred_at"), index.get("session_id")

    def adapt(row: list[str]) -> EventRow:
        customer = parse_id(row[i_customer], "customer_id", required=True)
        item = parse_id(row[i_item], "item_id", required=True)
        type_ = parse_type(row[i_type])
        value = _number(row[i_value], "value", decimal_comma=decimal_comma) if i_value is not None else None
        if type_ == Interaction.Type.RATING and value is None:
            raise InvalidEvent("value", "a rating needs a value")
        check_value(type_, value)
        raw_time = row[i_time].strip() if i_time is not None else ""
        occurred = parse_time(raw_time, now=now) if raw_time else now
        session = parse_id(row[i_session], "session_id", required=False) if i_session is not None else ""
        event_id = parse_id(row[i_event], "event_id", required=False) if i_event is not None else ""
        if not event_id:
            stamp = occurred.isoformat() if raw_time else ""
            event_id = derive_event_id(customer, session, item, type_, value, stamp)
        return event_id, customer, session, item, type_, value, occurred

    return adapt


def online_retail_adapter(index: dict[str, int], now: datetime, *, decimal_comma: bool = False) -> Adapter:
    """One invoice line = one purchase of ``Quantity`` units; the invoice is the session (the basket).

    Skipped as a real importer would: cancellations (InvoiceNo starting with C: returns, not purchases), lines
    without a customer (nothing to personalise), non-positive quantities (stock adjustments) and non-positive
    prices (write-offs, samples), and stock codes without a digit, which are not products (POST, DOT, M, BANK
    CHARGES, AMAZONFEE, ...). Times carry no zone and are read as UTC (the shop is in the UK): ISO 8601, or the
    ``M/D/YYYY H:MM`` a spreadsheet writes when the UCI workbook is saved as CSV (``12/1/2010 8:26``).
    """
    i_invoice, i_stock, i_qty = index["InvoiceNo"], index["StockCode"], index["Quantity"]
    i_time, i_price, i_customer = index["InvoiceDate"], index["UnitPrice"], index["CustomerID"]

    def adapt(row: list[str]) -> EventRow:
        invoice = parse_id(row[i_invoice], "InvoiceNo", required=True)  # the basket's session id: the id rule
        if invoice.startswith("C"):
            raise SkipRow("cancellation")
        customer = row[i_customer].strip()
        if not customer:
            raise SkipRow("no customer")
        if customer.endswith(".0"):
            customer = customer[:-2]
        quantity = _number(row[i_qty], "Quantity", decimal_comma=decimal_comma)
        if quantity is None or quantity <= 0:
            raise SkipRow("quantity <= 0")
        try:
            check_value(Interaction.Type.PURCHASE, quantity)
        except InvalidEvent as exc:
            raise InvalidEvent("Quantity", exc.reason) from None
        price = _number(row[i_price], "UnitPrice", decimal_comma=decimal_comma)
        if price is None or price <= 0:
            raise SkipRow("price <= 0")
        # Capitalised before the id rule: some letters grow (``ß`` is ``SS``), and the rule is the stored id's.
        item = parse_id(row[i_stock].upper(), "StockCode", required=True)
        if not _has_digit(item):
            raise SkipRow("not a product (postage, fees, manual)")
        raw_time = row[i_time].strip()
        occurred = _retail_time(raw_time, now=now)
        customer = parse_id(customer, "CustomerID", required=True)
        purchase = int(Interaction.Type.PURCHASE)
        event_id = derive_event_id(customer, invoice, item, purchase, quantity, raw_time, repr(price))
        return event_id, customer, invoice, item, purchase, quantity, occurred

    return adapt


_SPREADSHEET_TIME = re.compile(r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}(:\d{2})?")


def _retail_time(raw: str, *, now: datetime) -> datetime:
    """An Online Retail InvoiceDate: ISO 8601, or the workbook's own ``M/D/YYYY H:MM[:SS]`` (month first)."""
    try:
        if not _SPREADSHEET_TIME.fullmatch(raw):
            return parse_time(raw, now=now)
        try:
            pattern = "%m/%d/%Y %H:%M:%S" if raw.count(":") == 2 else "%m/%d/%Y %H:%M"
            value = datetime.strptime(raw, pattern).replace(tzinfo=UTC)  # no zone: UTC, as above
        except ValueError:
            raise InvalidEvent("InvoiceDate", f"{raw!r} is not a date (month/day/year hour:minute)") from None
        return check_time(value, now=now)
    except InvalidEvent as exc:
        # The shared rule names the generic format's column; a report names this file's ("occurred_at: 2100-12-01
        # is in the future" named a column an Online Retail file does not have).
        raise InvalidEvent("InvoiceDate", exc.reason) from None


FORMATS: dict[str, tuple[set[str], set[str], Callable[..., Adapter]]] = {
    "generic": (GENERIC_REQUIRED, GENERIC_OPTIONAL, generic_adapter),
    "online-retail": (ONLINE_RETAIL_COLUMNS, set(), online_retail_adapter),
}
