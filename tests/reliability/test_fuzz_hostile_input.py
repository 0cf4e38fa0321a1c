"""Every write endpoint fuzzed with hostile JSON (Hypothesis): nesting up to thousands of levels, integers past 64
bits, floats up to 1e308 and numbers JSON cannot hold, control characters, ANSI escapes, NUL, blank and over-long
ids, wrong types. For every request:

- no 5xx, and the answer is JSON;
- an error names a field of the endpoint (``tags[3]`` for a list element), ``detail`` for a body that is not
  JSON at all, or ``non_field_errors``;
- a rejected request stores nothing (an events batch stores exactly what it reports as accepted);
- whatever was stored reads back: ``GET`` of the item or customer (and the customer's export) answers 200.

Runs on the real Postgres and Redis inside the test's transaction. Bounded (derandomized, no shrinking) so the
suite stays fast: about 300 requests in all.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from catalog.models import Customer, Item
from events.models import Interaction
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=80,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)

# --- Hostile values -----------------------------------------------------------------------------------------

NASTY_TEXT = st.sampled_from(
    ["", " ", "  c1 ", "\x00", "a\x00b", "\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "tab\there", "line\nbreak",
     "zero\u200bwidth", "\u2028", "s:session", "x" * 101, "x" * 100, "ok", "sku-1", "c1", "☃", "%00", "../.."]
)  # fmt: skip
TEXT = st.one_of(NASTY_TEXT, st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
NUMBERS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 10, 11, 2**63 - 1, 2**63, -(2**63) - 1, 1180591620717411303424]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 10.000001, -0.0]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=12,
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested ``depth`` levels (lists or objects), up to far past any limit."""
    depth = draw(st.sampled_from([2, 15, 16, 17, 31, 32, 33, 300, 900]))  # json.dumps itself recurses
    value: Any = draw(SCALARS)
    as_dict = draw(st.booleans())
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


ANY = st.one_of(SCALARS, JSON_VALUES, deep())


def fields(plausible: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A body with any subset of the endpoint's fields, each plausible or hostile, plus an unknown field or none."""
    return st.fixed_dictionaries(
        {}, optional={name: st.one_of(strategy, ANY) for name, strategy in plausible.items()} | {"zz": ANY}
    )


ITEM_FIELDS = {
    "title": st.just("A title"),
    "description": TEXT,
    "category": st.sampled_from(["cat-1", "shoes"]),
    "brand": st.sampled_from(["b-1"]),
    "price": st.sampled_from([0, 9.99, "12.50", 1e12]),
    "in_stock": st.booleans(),
    "active": st.booleans(),
    "tags": st.lists(TEXT, max_size=4),
    "attributes": st.dictionaries(TEXT, JSON_VALUES, max_size=3),
    "created_at": st.sampled_from(["2026-01-01T00:00:00Z", "yesterday"]),
}
CUSTOMER_FIELDS = {
    "attributes": st.dictionaries(TEXT, JSON_VALUES, max_size=3),
    "personalisation_opt_out": st.booleans(),
}
EVENT_FIELDS = {
    "event_id": TEXT,
    "customer_id": st.sampled_from(["c1", "c2"]),
    "session_id": st.sampled_from(["s1"]),
    "item_id": st.just("sku-1"),
    "type": st.sampled_from(["view", "click", "add_to_cart", "purchase", "rating"]),
    "value": NUMBERS,
    "occurred_at": st.sampled_from(["2026-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "nope"]),
    "request_id": TEXT,
}
MERGE_FIELDS = {"customer_id": st.sampled_from(["c1", "c-merged"])}


def body(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """The body as bytes: usually the JSON of a generated object, sometimes not JSON a parser should accept."""
    as_json = strategy.map(lambda value: json.dumps(value, allow_nan=False).encode())
    raw = st.sampled_from(
        [b"", b"{", b"null", b"[]", b'"text"', b"1e999", b'{"value": NaN}', b"[" * 100_000, b"\xff\xfe",
         b'{"customer_id": "\\ud800"}', b'{"a": ' * 2000 + b"1" + b"}" * 2000]
    )  # fmt: skip
    return st.one_of(as_json, as_json, as_json, raw)


# --- Checks -------------------------------------------------------------------------------------------------


def _stored() -> tuple[int, int, int]:
    return Item.objects.count(), Customer.objects.count(), Interaction.objects.count()


def _check_error(response: Any, allowed: set[str]) -> None:
    assert response["Content-Type"] == "application/json", response.content[:200]
    errors = response.json()
    assert isinstance(errors, dict)
    assert errors, "an error must say what is wrong"
    for key in errors:
        name = re.sub(r"(\[\d+\])+$", "", key)
        assert name in allowed | {"detail", "non_field_errors"}, f"error key {key!r} names no field"


def _send(api: APIClient, method: str, path: str, data: bytes) -> Any:
    response = getattr(api, method)(path, data=data, content_type="application/json")
    assert response.status_code < 500, (path, data[:300], response.content[:300])
    return response


def _reads_back(api: APIClient, kind: str, external_id: str) -> None:
    quoted = quote(external_id, safe="")
    assert api.get(f"/v1/{kind}/{quoted}").status_code == 200
    if kind == "customers":
        assert api.get(f"/v1/customers/{quoted}/export").status_code == 200


@pytest.fixture
def sku(db: None) -> None:
    ItemFactory(external_id="sku-1")


# --- The endpoints ------------------------------------------------------------------------------------------


@FUZZ
@given(item_id=TEXT, data=body(fields(ITEM_FIELDS)))
def test_put_item_fuzzed(api: APIClient, sku: None, item_id: str, data: bytes) -> None:
    before = _stored()
    response = _send(api, "put", f"/v1/items/{quote(item_id, safe='')}", data)
    if response.status_code >= 400:
        _check_error(response, set(ITEM_FIELDS) | {"item_id"})
        assert _stored() == before
    else:
        _reads_back(api, "items", item_id)


@FUZZ
@given(customer_id=TEXT, data=body(fields(CUSTOMER_FIELDS)))
def test_put_customer_fuzzed(api: APIClient, customer_id: str, data: bytes) -> None:
    before = _stored()
    response = _send(api, "put", f"/v1/customers/{quote(customer_id, safe='')}", data)
    if response.status_code >= 400:
        _check_error(response, set(CUSTOMER_FIELDS) | {"customer_id"})
        assert _stored() == before
    else:
        _reads_back(api, "customers", customer_id)


EVENT = fields(EVENT_FIELDS)


@FUZZ
@given(data=body(st.one_of(EVENT, st.fixed_dictionaries({"events": st.lists(st.one_of(EVENT, ANY), max_size=4)}))))
@override_settings(API_CUSTOMER_RATE_PER_MINUTE=1_000_000)
def test_post_events_fuzzed(api: APIClient, sku: None, data: bytes) -> None:
    before = Interaction.objects.count()
    response = _send(api, "post", "/v1/events", data)
    if response.status_code >= 400:
        _check_error(response, set(EVENT_FIELDS) | {"events"})
        assert Interaction.objects.count() == before
        return
    result = response.json()
    assert Interaction.objects.count() == before + result["accepted"]
    for rejection in result["rejected"]:
        assert set(rejection["errors"]) <= set(EVENT_FIELDS) | {"non_field_errors"}
    for customer in Customer.objects.values_list("external_id", flat=True):
        _reads_back(api, "customers", customer)


@FUZZ
@given(session_id=TEXT, data=body(fields(MERGE_FIELDS)))
@override_settings(API_CUSTOMER_RATE_PER_MINUTE=1_000_000)
def test_post_session_merge_fuzzed(api: APIClient, session_id: str, data: bytes) -> None:
    before = _stored()
    response = _send(api, "post", f"/v1/sessions/{quote(session_id, safe='')}/merge", data)
    if response.status_code >= 400:
        _check_error(response, set(MERGE_FIELDS) | {"session_id"})
        assert _stored() == before
    else:
        _reads_back(api, "customers", response.json()["customer_id"])
