"""Hostile input (issue 14, the input rows): each attack the issue reports, replayed, with the answer it must get
now: a 4xx JSON body naming the field (or the body), nothing stored from a rejected request, and nothing stored
that can break a later read or a rebuild. docs/reliability.md, "Hostile input", lists them with these tests.

The rows about what happens before Django (chunked bodies, gunicorn's own errors) run against a real gunicorn
serving this checkout on the test database (``gunicorn_server``)."""

from __future__ import annotations

import gzip
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from wsgiref.util import setup_testing_defaults

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from catalog.models import Customer, Item
from events import keys
from events.models import Interaction
from events.selectors import category_affinity
from events.services import online_state_rebuild
from kernel import redis_client
from kernel.api_keys import api_key_create
from kernel.parsers import MAX_JSON_DEPTH, json_depth
from kernel.validation import ATTRIBUTES_MAX_DEPTH, SUBRESOURCE_NAMES, render_safe_json
from recsys.wsgi_guards import MAX_URL_BYTES, url_guard
from tests.factories import CategoryFactory, CustomerFactory, InteractionFactory, ItemFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def _stored() -> tuple[int, int, int]:
    return Item.objects.count(), Customer.objects.count(), Interaction.objects.count()


def _nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def _nested_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _raw_event(type_: str, value: str) -> str:
    """An event whose ``value`` is the JSON text ``value``, as sent (not as Python would write it)."""
    return '{"customer_id": "c1", "item_id": "sku-1", "type": "' + type_ + '", "value": ' + value + "}"


@pytest.fixture
def sku() -> Item:
    return ItemFactory(external_id="sku-1")


# --- JSON nested 1,000 deep on every write endpoint ---------------------------------------------------------

WRITES = [
    ("post", "/v1/events", '{"customer_id": "c1", "item_id": "sku-1", "type": "view", "x": %s}'),
    ("put", "/v1/items/sku-new", '{"title": "T", "attributes": {"x": %s}}'),
    ("put", "/v1/customers/c-new", '{"attributes": {"x": %s}}'),
    ("post", "/v1/sessions/s1/merge", '{"customer_id": "c-new", "x": %s}'),
]


@pytest.mark.parametrize(("method", "path", "template"), WRITES)
@pytest.mark.parametrize("depth", [1000, 100_000])
def test_json_nested_1000_deep_is_a_400_naming_the_body(
    api: APIClient, sku: Item, method: str, path: str, template: str, depth: int
) -> None:
    before = _stored()
    body = template % _nested_list(depth)
    response = getattr(api, method)(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    message = json.dumps(response.json())
    assert "nested" in message
    assert "body" in message
    assert _stored() == before


def test_nesting_up_to_the_limit_is_parsed(api: APIClient, sku: Item) -> None:
    body = '{"customer_id": "c1", "item_id": "sku-1", "type": "view", "x": ' + _nested_list(MAX_JSON_DEPTH - 1) + "}"
    assert api.post("/v1/events", data=body, content_type="application/json").status_code == 202


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": "[[[[{{{"}]}', 3),  # brackets inside strings do not count
        (b'["\\"[[[["]', 1),  # nor after an escaped quote
        (b"[" * 500 + b"]" * 500, 500),
    ],
)
def test_json_depth_counts_brackets_outside_strings(raw: bytes, depth: int) -> None:
    assert json_depth(raw) == depth


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_TRICKY_TEXT = st.text(st.sampled_from('[]{}"\\ax\u00e9'), max_size=8)
_JSON = st.recursive(
    st.none() | st.integers() | _TRICKY_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_TRICKY_TEXT, children, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(value=_JSON, ascii_only=st.booleans())
def test_json_depth_is_the_nesting_of_any_json(value: Any, ascii_only: bool) -> None:
    assert json_depth(json.dumps(value, ensure_ascii=ascii_only).encode()) == _depth(value)


# --- Ratings and values: bounded and finite -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e308", "-1e308", "10.5", "-0.5"])
def test_a_rating_outside_0_to_10_is_a_400_naming_value(api: APIClient, sku: Item, value: str) -> None:
    body = _raw_event("rating", value)
    response = api.post("/v1/events", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"value": ["A rating must be between 0 and 10."]}
    assert not Interaction.objects.exists()


@pytest.mark.parametrize("value", ["1e10", "-1e10", "1e308"])
def test_a_quantity_or_revenue_beyond_1e9_is_a_400_naming_value(api: APIClient, sku: Item, value: str) -> None:
    body = _raw_event("purchase", value)
    response = api.post("/v1/events", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"value": ["Must be between -1e+09 and 1e+09."]}
    assert not Interaction.objects.exists()


@pytest.mark.parametrize("number", ["1e999", "-1e999", "NaN", "Infinity"])
def test_a_number_json_cannot_hold_is_a_400(api: APIClient, sku: Item, number: str) -> None:
    body = _raw_event("rating", number)
    response = api.post("/v1/events", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")
    assert not Interaction.objects.exists()


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_body_is_a_415_naming_its_encoding(api: APIClient, sku: Item, coding: str) -> None:
    """An eleventh tester: a gzipped event was a 400 "'utf-8' codec can't decode byte 0x8b", naming nothing."""
    body = gzip.compress(json.dumps({"customer_id": "c1", "item_id": sku.external_id, "type": "view"}).encode())
    response = api.post("/v1/events", data=body, content_type="application/json", HTTP_CONTENT_ENCODING=coding)
    assert response.status_code == 415
    assert response.json() == {"detail": f"Content-Encoding {coding!r} is not accepted: send the body uncompressed."}
    assert not Interaction.objects.exists()
    plain = gzip.decompress(body)
    response = api.post("/v1/events", data=plain, content_type="application/json", HTTP_CONTENT_ENCODING="identity")
    assert response.status_code == 202


def test_a_batch_rejects_the_huge_rating_by_index_and_keeps_the_rest(api: APIClient, sku: Item) -> None:
    events = [
        {"event_id": "ok", "customer_id": "c1", "item_id": "sku-1", "type": "rating", "value": 4},
        {"event_id": "huge", "customer_id": "c1", "item_id": "sku-1", "type": "rating", "value": 1e308},
    ]
    response = api.post("/v1/events", {"events": events}, format="json")
    assert response.status_code == 202
    assert response.json()["rejected"] == [{"index": 1, "errors": {"value": ["A rating must be between 0 and 10."]}}]
    assert list(Interaction.objects.values_list("event_id", flat=True)) == ["ok"]


def test_ratings_stored_before_the_rule_cannot_break_the_rebuild(api: APIClient) -> None:
    """The issue's row: 1e308 then -1e308 were accepted, the affinity became inf, and the rebuild's affinity query
    failed with "value out of range: overflow". Rows already stored are clipped to the documented range."""
    category = CategoryFactory(external_id="shoes")
    item = ItemFactory(external_id="sku-1", category=category)
    customer = CustomerFactory(external_id="c1")
    for n, value in enumerate([1e308, -1e308, 1e308, float("nan")]):
        InteractionFactory(event_id=f"r{n}", customer=customer, item=item, type=Interaction.Type.RATING, value=value)
    online_state_rebuild()
    affinity = category_affinity("c1")
    assert set(affinity) == {category.pk}
    # clipped: 10 + 0 + 10 + 10 (NaN is the greatest float8 in Postgres), decayed by at most a few seconds
    assert affinity[category.pk] == pytest.approx(30.0, rel=1e-3)
    # and the next event still updates it
    assert (
        api.post("/v1/events", {"customer_id": "c1", "item_id": "sku-1", "type": "view"}, format="json").status_code
        == 202
    )
    assert math.isfinite(category_affinity("c1")[category.pk])


def test_an_affinity_poisoned_in_redis_is_never_served(api: APIClient) -> None:
    category = CategoryFactory(external_id="shoes")
    other = CategoryFactory(external_id="hats")
    ItemFactory(external_id="sku-1", category=category)
    redis_client.get().zadd(keys.affinity("c1"), {str(category.pk): float("inf"), str(other.pk): 1.0})
    assert set(category_affinity("c1")) == {other.pk}
    response = api.post(
        "/v1/events", {"customer_id": "c1", "item_id": "sku-1", "type": "rating", "value": 5}, format="json"
    )
    assert response.status_code == 202
    assert all(math.isfinite(weight) for weight in category_affinity("c1").values())
    recommendation = api.get("/v1/recommendations", {"customer_id": "c1"})
    assert recommendation.status_code in (200, 503)  # 503 only when no model exists yet; never a 500


# --- Invalid tags: error keys are paths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "key"),
    [([""], "tags[0]"), ([None], "tags[0]"), (["x" * 101], "tags[0]"), (["ok", "a\x00b"], "tags[1]"),
     (["ok", "ok", "\x1b[31mred"], "tags[2]")],
)  # fmt: skip
def test_an_invalid_tag_is_a_400_keyed_by_its_path(api: APIClient, tags: list[Any], key: str) -> None:
    response = api.put("/v1/items/sku-t", {"title": "T", "tags": tags}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == [key]
    assert not Item.objects.filter(external_id="sku-t").exists()


def test_every_error_key_becomes_a_string_path() -> None:
    from kernel.exceptions import error_paths

    nested = {"tags": {0: ["bad"], 3: ["worse"]}, "events": [{"x": {1: ["e"]}}], "title": ["t"]}
    assert error_paths(nested) == {
        "tags[0]": ["bad"], "tags[3]": ["worse"], "events": [{"x[1]": ["e"]}], "title": ["t"],
    }  # fmt: skip


# --- Attributes: bounded at write, rendered defensively at read ---------------------------------------------

BAD_ATTRIBUTES = [
    pytest.param(_nested_dict(ATTRIBUTES_MAX_DEPTH + 1), "deeper than 16 levels", id="deep"),
    pytest.param({"n": 1180591620717411303424}, "64-bit", id="2**70"),
    pytest.param({"n": -(2**63) - 1}, "64-bit", id="-2**63-1"),
    pytest.param({"k\x00": 1}, "NUL", id="nul-key"),
    pytest.param({"s": "a\x00b"}, "NUL", id="nul-string"),
    # jsonb keeps 1e308 as a 309-digit integer, which a later read could only give back as a string
    pytest.param({"f": 1e308}, "64-bit", id="float-1e308"),
    pytest.param({"f": -1e19}, "64-bit", id="float--1e19"),
]


@pytest.mark.parametrize("path", ["/v1/items/sku-a", "/v1/customers/c-a"])
@pytest.mark.parametrize(("attributes", "reason"), BAD_ATTRIBUTES)
def test_attributes_that_cannot_be_stored_safely_are_a_400_naming_attributes(
    api: APIClient, path: str, attributes: dict[str, Any], reason: str
) -> None:
    before = _stored()
    response = api.put(path, {"title": "T", "attributes": attributes}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["attributes"]
    assert reason in response.json()["attributes"][0]
    assert _stored() == before


def test_attributes_at_the_limits_are_stored_and_read_back(api: APIClient) -> None:
    attributes = {"deep": _nested_dict(ATTRIBUTES_MAX_DEPTH - 1), "big": 2**63 - 1, "small": -(2**63), "f": 1.5}
    assert api.put("/v1/items/sku-a", {"title": "T", "attributes": attributes}, format="json").status_code == 201
    assert api.get("/v1/items/sku-a").json()["attributes"] == attributes


def test_attributes_already_stored_never_break_a_read(api: APIClient) -> None:
    """The issue's row: attributes nested 300 deep, a customer attribute 2**70, stored by an older version (or by
    hand): every later GET was a 500 and the storefront's item page a 503."""
    deep = _nested_dict(300)
    ItemFactory(external_id="sku-odd", attributes={"deep": deep, "n": 1180591620717411303424})
    CustomerFactory(external_id="c-odd", attributes={"n": 1180591620717411303424, "deep": deep})
    item = api.get("/v1/items/sku-odd")
    assert item.status_code == 200
    assert item.json()["attributes"]["n"] == "1180591620717411303424"
    customer = api.get("/v1/customers/c-odd")
    assert customer.status_code == 200
    assert customer.json()["attributes"]["n"] == "1180591620717411303424"
    export = api.get("/v1/customers/c-odd/export")
    assert export.status_code == 200
    assert json.loads(b"".join(export.streaming_content))["customer"]["attributes"]["n"] == "1180591620717411303424"


def test_render_safe_json_keeps_plain_values_and_fixes_the_rest() -> None:
    plain = {"a": [1, 2.5, "x", None, True, {"b": -(2**63)}]}
    assert render_safe_json(plain) == plain
    assert render_safe_json({"n": 2**64, "f": float("inf"), 1: "k"}) == {"n": str(2**64), "f": None, "1": "k"}
    cut = render_safe_json(_nested_dict(300))
    depth = 0
    while isinstance(cut, dict) and cut:
        cut, depth = cut["a"], depth + 1
    assert cut is None
    assert depth == 64


# --- Ids: one rule for every endpoint and import ------------------------------------------------------------

BAD_IDS = [
    pytest.param(
        "\x1b[31mred\x1b[0m",
        "Contains U+001B (a control character) at position 1: no control or invisible characters.",
        id="ansi",
    ),
    pytest.param(
        "a\tb", "Contains U+0009 (a control character) at position 2: no control or invisible characters.", id="tab"
    ),
    pytest.param(
        "zero\u200bwidth",
        "Contains U+200B (ZERO WIDTH SPACE) at position 5: no control or invisible characters.",
        id="zwsp",
    ),
    pytest.param(
        "line\u2028sep",
        "Contains U+2028 (LINE SEPARATOR) at position 5: no control or invisible characters.",
        id="line-separator",
    ),
    pytest.param("a\x00b", "Null characters are not allowed.", id="nul"),
    pytest.param("\u200dx", "Starts or ends with an invisible joiner.", id="joiner-at-an-end"),
    pytest.param(" ", "May not be blank.", id="space"),
    pytest.param(" c1", "Starts or ends with whitespace.", id="leading-space"),
    pytest.param("c1 ", "Starts or ends with whitespace.", id="trailing-space"),
    pytest.param("x" * 101, "Longer than 100 characters.", id="101"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_IDS)
def test_a_bad_id_in_a_catalog_path_is_a_400_naming_it(api: APIClient, raw: str, message: str) -> None:
    before = _stored()
    response = api.put(f"/v1/customers/{quote(raw, safe='')}", {"attributes": {}}, format="json")
    assert (response.status_code, response.json()) == (400, {"customer_id": [message]})
    response = api.put(f"/v1/items/{quote(raw, safe='')}", {"title": "T"}, format="json")
    assert (response.status_code, response.json()) == (400, {"item_id": [message]})
    assert _stored() == before


@pytest.mark.parametrize(
    "raw", ["\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\U0001f468\u200d\U0001f469\u200d\U0001f467"]
)
def test_an_id_may_hold_the_joiners_its_script_needs(api: APIClient, raw: str) -> None:
    """A Persian word (its zero-width non-joiner) and an emoji family (zero-width joiners) were refused as
    "control or unprintable" (a seventh tester, 6 December); every other invisible character still is, named."""
    response = api.put(f"/v1/items/{quote(raw, safe='')}", {"title": "T"}, format="json")
    assert response.status_code == 201, response.content
    assert api.get(f"/v1/items/{quote(raw, safe='')}").json()["item_id"] == raw


@pytest.mark.parametrize(
    "raw", ["\x1b[31mred", "a\tb", "zero\u200bwidth", "a\x00b", " ", "x" * 101, 42, 4.2, True, ["c1"], {"c": 1}]
)
def test_a_bad_customer_id_in_a_merge_body_is_a_400_naming_it(api: APIClient, raw: object) -> None:
    before = _stored()
    response = api.post("/v1/sessions/s1/merge", {"customer_id": raw}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["customer_id"]
    assert _stored() == before


@pytest.mark.parametrize("raw", ["\x1b[31mred", "a\tb", "a\nb", "a\x00b", " ", "x" * 101, " s1", "s1 ", "s/1\n"])
def test_a_bad_session_id_in_a_merge_path_is_a_400_naming_it(api: APIClient, raw: str) -> None:
    response = api.post(f"/v1/sessions/{quote(raw, safe='')}/merge", {"customer_id": "c1"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["session_id"]
    assert not Customer.objects.exists()


def test_a_category_or_brand_id_follows_the_rule_too(api: APIClient) -> None:
    response = api.put("/v1/items/sku-c", {"title": "T", "category": "\x1b[2J", "brand": "b\x00"}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "category": ["Contains U+001B (a control character) at position 1: no control or invisible characters."],
        "brand": ["Null characters are not allowed."],
    }
    response = api.put("/v1/items/sku-c", {"title": "T", "category": " kitchen ", "brand": 7}, format="json")
    assert response.json() == {"brand": ["Must be a string."]}
    assert not Item.objects.filter(external_id="sku-c").exists()


def test_the_events_api_applies_the_same_rule(api: APIClient, sku: Item) -> None:
    response = api.post("/v1/events", {"customer_id": "\x1b[31mred", "item_id": "sku-1", "type": "view"}, format="json")
    assert response.json() == {
        "customer_id": ["Contains U+001B (a control character) at position 1: no control or invisible characters."]
    }
    response = api.post("/v1/events", {"customer_id": 42, "item_id": "sku-1", "type": "view"}, format="json")
    assert response.json() == {"customer_id": ["Must be a string."]}


PATH_ID_ROUTES = [
    ("get", "/v1/items/{}", "item_id"),
    ("put", "/v1/items/{}", "item_id"),
    ("delete", "/v1/items/{}", "item_id"),
    ("get", "/v1/items/{}/similar", "item_id"),
    ("get", "/v1/items/{}/bought-together", "item_id"),
    ("get", "/v1/customers/{}", "customer_id"),
    ("put", "/v1/customers/{}", "customer_id"),
    ("delete", "/v1/customers/{}", "customer_id"),
    ("get", "/v1/customers/{}/export", "customer_id"),
    ("post", "/v1/customers/{}/opt-out", "customer_id"),
    ("post", "/v1/customers/{}/opt-in", "customer_id"),
    ("get", "/v1/customers/{}/because-you-viewed", "customer_id"),
    ("post", "/v1/sessions/{}/merge", "session_id"),
]


@pytest.mark.parametrize(("method", "route", "field"), PATH_ID_ROUTES)
def test_nul_in_any_path_id_is_a_400_naming_the_field(api: APIClient, method: str, route: str, field: str) -> None:
    response = getattr(api, method)(route.format("a%00b"), {"title": "T", "customer_id": "c1"}, format="json")
    assert response.status_code == 400
    assert response.json() == {field: ["Null characters are not allowed."]}
    assert _stored() == (0, 0, 0)


def _import_items(tmp_path: Path, text: str) -> tuple[int, list[tuple[int, str]]]:
    """``import_items`` on a file of ``text``: how many rows it stored, and its (line, reason) errors."""
    from catalog.importing import items_import

    path = tmp_path / "items.csv"
    path.write_text(text)
    errors: list[Any] = []
    summary = items_import(path=path, on_error=errors.append)
    return summary.stored, [(error.line, error.reason) for error in errors]


def test_import_items_names_file_line_and_reason_for_a_bad_id(tmp_path: Path) -> None:
    stored, errors = _import_items(
        tmp_path, "item_id,title,category,tags\nok,T,c,a|b\n\x1b[31mred,T,c,\nfine,T,\x07bell,\nt,T,c,a|\x00z\n"
    )
    assert stored == 1
    assert errors == [
        (3, "item_id: contains U+001B (a control character) at position 1: no control or invisible characters"),
        (4, "category: contains U+0007 (a control character) at position 1: no control or invisible characters"),
        (5, "tags: a tag null characters are not allowed"),
    ]


@pytest.mark.parametrize(
    ("field", "text", "reason"),
    [
        ("title", "\x1b[31mred", "Contains control characters."),
        ("title", "two\nlines", "Contains control characters."),
        ("title", "two\u2028lines", "Contains control characters."),
        ("title", "\u202eevil", "Contains control characters."),
        ("description", "bell\x07", "Contains control characters."),
        ("description", "a\x00b", "Null characters are not allowed."),
    ],
)
def test_display_text_with_control_characters_is_a_400_naming_the_field(
    api: APIClient, field: str, text: str, reason: str
) -> None:
    """ANSI escapes in a title were stored and echoed into every list's reason text (found 5 December)."""
    body = {"title": "T", field: text}
    response = api.put("/v1/items/sku-t", body, format="json")
    assert response.status_code == 400
    assert response.json() == {field: [reason]}
    assert not Item.objects.filter(external_id="sku-t").exists()


def test_display_text_of_any_script_is_stored_and_tags_once_each(api: APIClient) -> None:
    body = {
        "title": "\u05e1\u05e4\u05e8 \u200fRTL\u200e \u00e9t\u00e9 \u2615",  # Hebrew, direction marks, accents, emoji
        "description": "line one\r\n\tline two",
        "tags": ["dup", "other", "dup"],
    }
    assert api.put("/v1/items/sku-u", body, format="json").status_code == 201
    stored = api.get("/v1/items/sku-u").json()
    assert (stored["title"], stored["description"]) == (body["title"], body["description"])
    assert stored["tags"] == ["dup", "other"]


def test_import_items_applies_the_text_rule_and_keeps_a_tag_once(tmp_path: Path) -> None:
    stored, errors = _import_items(
        tmp_path, 'item_id,title,description,tags\nok,T,"two\nlines",a|b|a\nbad,\x1b[2JT,,\n'
    )
    assert stored == 1
    assert errors == [(4, "title: contains control characters")]
    assert Item.objects.get(external_id="ok").tags == ["a", "b"]


def test_import_events_applies_the_same_id_and_value_rules(tmp_path: Path) -> None:
    from events.services import interactions_import

    ItemFactory(external_id="sku-1")
    path = tmp_path / "events.csv"
    path.write_text(
        "customer_id,item_id,type,value\nc1,sku-1,view,\n\x1b[31mred,sku-1,view,\nc2,sku-1,rating,1e308\n"
        "c3,sku-1,purchase,1e12\n"
    )
    errors: list[Any] = []
    summary = interactions_import(path=path, on_error=errors.append)
    assert summary.stored == 1
    assert [(error.line, error.reason) for error in errors] == [
        (3, "customer_id: contains U+001B (a control character) at position 1: no control or invisible characters"),
        (4, "value: a rating must be between 0 and 10"),
        (5, "value: must be between -1e+09 and 1e+09"),
    ]


# --- Errors are JSON on API paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nowhere", "/v1/items/x/nowhere", "/v1", "/api/nowhere"])
def test_an_unmatched_api_url_is_a_json_404(api: APIClient, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "detail" in response.json()


def test_an_unmatched_page_is_still_html(api: APIClient) -> None:
    response = APIClient().get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert b"URLconf" not in response.content  # no debug page listing the URL patterns


def test_a_wrong_method_is_a_json_405(api: APIClient) -> None:
    response = api.patch("/v1/events", {}, format="json")
    assert response.status_code == 405
    assert response.json() == {"detail": 'Method "PATCH" not allowed.'}


def test_an_over_long_url_is_a_json_414_before_django() -> None:
    reached: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        reached.append(environ["QUERY_STRING"])
        start_response("200 OK", [])
        return [b""]

    guarded = url_guard(app)
    statuses: list[str] = []
    for query in ("q=" + "a" * 100, "q=" + "a" * MAX_URL_BYTES):
        environ: dict[str, Any] = {"PATH_INFO": "/v1/recommendations", "QUERY_STRING": query}
        setup_testing_defaults(environ)
        body = b"".join(guarded(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK", "414 URI Too Long"]
    assert json.loads(body) == {"detail": f"The URL is longer than {MAX_URL_BYTES:,} bytes."}
    assert len(reached) == 1


def test_a_path_or_query_that_is_not_utf8_is_a_json_400_before_django() -> None:
    """``PUT /v1/items/%FF`` stored the item ``%FF`` (Django keeps escapes it cannot decode), which ``%25FF`` names
    too. WSGI passes the path's bytes as latin-1 characters: gunicorn decodes ``%FF`` to ``"\xff"``."""
    reached: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        reached.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    guarded = url_guard(app)
    statuses: list[str] = []
    paths = [
        "/v1/items/\xff", "/v1/items/\xc0\xaf", "/v1/items/\xed\xa0\x80",  # not UTF-8 (an overlong, a surrogate)
        "/v1/items/%FF", "/v1/items/caf\xc3\xa9",  # "%FF" sent as %25FF; "café" sent as UTF-8
    ]  # fmt: skip
    bodies = []
    for path in paths:
        environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": ""}
        setup_testing_defaults(environ)
        bodies.append(b"".join(guarded(environ, lambda status, headers: statuses.append(status))))
    assert statuses == ["400 Bad Request"] * 3 + ["200 OK"] * 2
    assert "UTF-8" in json.loads(bodies[0])["detail"]
    assert reached == ["/v1/items/%FF", "/v1/items/caf\xc3\xa9"]
    # The query string alike: Django read %FF and %FE both as U+FFFD (one customer id for two spellings).
    statuses.clear()
    for query in ("customer_id=%FF", "customer_id=%fe&count=3", "customer_id=caf%C3%A9", "customer_id=%25FF", "q=\xff"):
        environ = {"PATH_INFO": "/v1/recommendations", "QUERY_STRING": query}
        setup_testing_defaults(environ)
        b"".join(guarded(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["400 Bad Request", "400 Bad Request", "200 OK", "200 OK", "400 Bad Request"]


def test_debug_is_off_in_the_demo_settings_unless_asked_for() -> None:
    """`make run` uses recsys.settings.dev: no debug pages unless DEBUG=1 is set explicitly."""
    code = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DJANGO_SETTINGS_MODULE")}
    env["DJANGO_SETTINGS_MODULE"] = "recsys.settings.dev"
    out = [
        subprocess.run([sys.executable, "-c", code], env=env | extra, cwd=ROOT, capture_output=True, text=True,
                       timeout=120).stdout.strip().splitlines()[-1]
        for extra in ({}, {"DEBUG": "1"})
    ]  # fmt: skip
    assert out == ["False", "True"]


# --- Before Django: a real gunicorn -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gunicorn_server(django_db_setup: None) -> Iterator[str]:
    """gunicorn serving this checkout (its gunicorn.conf.py included) on the test database and Redis."""
    parts = urlsplit(django_settings.DATABASE_URL)
    database_url = urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "recsys.settings.test",
        "DATABASE_URL": database_url,
        "RECSYS_TEST_KEEP_REDIS_DB": "1",
        "REDIS_URL": django_settings.REDIS_URL,
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "recsys.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--threads", "2", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _raw(server: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_read_under_gunicorn(gunicorn_server: str) -> None:
    ItemFactory(external_id="sku-1")
    _, key = api_key_create(name="chunked", scopes=["events"])
    body = json.dumps({"event_id": "e-chunked", "customer_id": "c1", "item_id": "sku-1", "type": "view"}).encode()
    host, port = gunicorn_server.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "POST", "/v1/events", body=iter([body[:10], body[10:]]), encode_chunked=True,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )  # fmt: skip
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (202, {"accepted": 1, "duplicates": 0, "rejected": []})
    assert Interaction.objects.filter(event_id="e-chunked").exists()


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_over_the_size_limit_is_a_413(gunicorn_server: str) -> None:
    _, key = api_key_create(name="chunked", scopes=["events"])
    chunk = b" " * 1024 * 1024
    host, port = gunicorn_server.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "POST", "/v1/events", body=iter([b"{", chunk, chunk, chunk, b"}"]), encode_chunked=True,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )  # fmt: skip
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {"detail": "The request body is larger than 2,097,152 bytes."}


@pytest.mark.django_db(transaction=True)
def test_gunicorns_own_errors_are_json(gunicorn_server: str) -> None:
    long_line = b"GET /v1/recommendations?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, headers, body = _raw(gunicorn_server, long_line)
    assert (status, headers["content-type"]) == (414, "application/json")
    assert json.loads(body)["detail"].startswith("URI Too Long")
    bad_header = b"GET /v1/recommendations HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n"
    status, headers, body = _raw(gunicorn_server, bad_header)
    assert (status, headers["content-type"]) == (400, "application/json")
    assert "detail" in json.loads(body)


@pytest.mark.django_db(transaction=True)
def test_a_long_query_string_within_the_limit_reaches_django_and_gets_json(gunicorn_server: str) -> None:
    request = b"GET /v1/nowhere?q=" + b"a" * 7000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
    status, headers, body = _raw(gunicorn_server, request)
    assert (status, headers["content-type"]) == (404, "application/json")
    assert "detail" in json.loads(body)


@pytest.mark.django_db(transaction=True)
def test_the_storefront_page_of_an_item_with_odd_stored_attributes_renders(gunicorn_server: str) -> None:
    """The issue's row: the storefront item page was a 503 (its API call was a 500)."""
    ItemFactory(external_id="sku-odd", title="Odd", attributes={"deep": _nested_dict(300), "n": 2**70})
    request = f"GET /items/sku-odd HTTP/1.1\r\nHost: {gunicorn_server}\r\n\r\n".encode()
    status, _, body = _raw(gunicorn_server, request)
    assert status == 200
    assert b"Odd" in body


@pytest.mark.django_db(transaction=True)
def test_the_storefront_page_of_an_id_ending_in_a_sub_resource_name_is_a_404(gunicorn_server: str) -> None:
    """``/items/x%2Fsimilar`` fetched the similar items of ``x`` as if they were an item and failed on the missing
    ``item_id``: a 500 (a reviewer, 6 December)."""
    ItemFactory(external_id="x", title="Ex")
    for path in ("/items/x%2Fsimilar", "/items/x/bought-together"):
        request = f"GET {path} HTTP/1.1\r\nHost: {gunicorn_server}\r\n\r\n".encode()
        status, _, body = _raw(gunicorn_server, request)
        assert status == 404, (path, body[:300])
        assert b"We could not find that item" in body or b"could not" in body


@pytest.mark.parametrize("field", ["customer_id", "session_id"])
@pytest.mark.parametrize("raw", ["\x1b[31mred", "a\tb", "zero\u200bwidth", "x" * 101])
def test_a_bad_id_in_the_recommendation_query_is_a_400_naming_it(api: APIClient, field: str, raw: str) -> None:
    response = api.get("/v1/recommendations", {field: raw})
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_an_unexpected_error_in_an_api_view_is_a_json_500(api: APIClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from ranking import serving

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(serving, "because_you_viewed", broken)
    api.raise_request_exception = False
    response = api.get("/v1/customers/c1/because-you-viewed")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Internal server error."}


@pytest.mark.parametrize("encode", [True, False], ids=["slash-encoded", "slash-as-is"])
def test_an_id_with_a_slash_is_reachable_through_every_path(api: APIClient, encode: bool) -> None:
    """A customer ``acme/42`` (created by an event: the id rule allows ``/``) could never be exported, erased or
    opted out, and an item ``WX/100-B`` never read or asked for similar items: every path route stopped at ``/``
    and answered 404 (a tenth tester, 6 December). A client may send the ``/`` encoded or not."""

    def at(raw: str) -> str:
        return quote(raw, safe="") if encode else raw

    assert api.put(f"/v1/items/{at('WX/100-B')}", {"title": "Slashed"}, format="json").status_code == 201
    assert api.get(f"/v1/items/{at('WX/100-B')}").json()["item_id"] == "WX/100-B"
    assert api.put(f"/v1/items/{at('WX/100-B')}", {"title": "Renamed"}, format="json").status_code == 200
    for suffix in ("similar", "bought-together"):
        response = api.get(f"/v1/items/{at('WX/100-B')}/{suffix}")
        assert response.status_code == 200, (suffix, response.content)
        assert response.json()["surface"] == suffix.replace("-", "_")
    event = {"session_id": "s/1", "item_id": "WX/100-B", "type": "view"}
    assert api.post("/v1/events", event, format="json").status_code == 202
    merged = api.post(f"/v1/sessions/{at('s/1')}/merge", {"customer_id": "acme/42"}, format="json")
    assert merged.status_code == 200, merged.content
    assert Interaction.objects.get(session_id="s/1").customer.external_id == "acme/42"
    assert api.get(f"/v1/customers/{at('acme/42')}").json()["customer_id"] == "acme/42"
    assert api.get(f"/v1/customers/{at('acme/42')}/because-you-viewed").status_code == 200
    assert api.post(f"/v1/customers/{at('acme/42')}/opt-out").status_code == 200
    assert Customer.objects.get(external_id="acme/42").personalisation_opt_out
    assert api.post(f"/v1/customers/{at('acme/42')}/opt-in").status_code == 200
    export = api.get(f"/v1/customers/{at('acme/42')}/export")
    assert export.status_code == 200
    assert b'"WX/100-B"' in b"".join(export.streaming_content)  # type: ignore[attr-defined]
    assert api.delete(f"/v1/customers/{at('acme/42')}").status_code == 204
    assert not Customer.objects.filter(external_id="acme/42").exists()
    assert not Interaction.objects.filter(session_id="s/1").exists()
    assert api.delete(f"/v1/items/{at('WX/100-B')}").status_code == 204


@pytest.mark.parametrize("suffix", sorted(SUBRESOURCE_NAMES))
def test_an_id_ending_in_a_sub_resource_name_is_refused_naming_the_field(
    api: APIClient, suffix: str, tmp_path: Path
) -> None:
    """A customer ``acme/export`` stored through an event could never be read or erased through its path, and
    ``GET /v1/customers/acme%2Fexport`` answered the export of ``acme`` (a reviewer, 6 December): such ids are
    refused wherever an id comes in."""
    ItemFactory(external_id="i1")
    for field in ("customer_id", "session_id", "item_id"):
        event = {"customer_id": "c1", "item_id": "i1", "type": "view", field: f"acme/{suffix}"}
        response = api.post("/v1/events", {"events": [event]}, format="json")
        assert response.status_code == 202, response.content
        (rejected,) = response.json()["rejected"]
        assert list(rejected["errors"]) == [field]
        assert f'nds in "/{suffix}"' in rejected["errors"][field][0]
    merged = api.post("/v1/sessions/s1/merge", {"customer_id": f"acme/{suffix}"}, format="json")
    assert merged.status_code == 400
    assert list(merged.json()) == ["customer_id"]
    csv = tmp_path / "items.csv"
    csv.write_text(f"item_id,title\nok/{suffix}s,Fine\nsku/{suffix},Refused\n")
    err = StringIO()
    with pytest.raises(CommandError, match="1 row was rejected"):
        call_command("import_items", str(csv), "--quiet", stdout=StringIO(), stderr=err)
    assert f'items.csv:3: item_id: ends in "/{suffix}"' in err.getvalue()
    assert Item.objects.filter(external_id=f"ok/{suffix}s").exists()
    assert not Item.objects.filter(external_id=f"sku/{suffix}").exists()
    assert not Customer.objects.filter(external_id=f"acme/{suffix}").exists()
    # The name alone, or anywhere but last, is an ordinary id.
    for fine in (suffix, f"{suffix}/x", f"a/{suffix}/b", f"a/{suffix.upper()}"):
        assert api.put(f"/v1/customers/{quote(fine, safe='')}", {}, format="json").status_code == 201, fine


def test_every_route_with_a_name_after_an_id_is_a_refused_last_segment() -> None:
    """A route added later (``items/<id>/reviews``) must join kernel.validation.SUBRESOURCE_NAMES, or ids ending in
    its name would shadow it."""
    from django.urls import URLPattern, URLResolver, get_resolver

    def routes(patterns: list[Any], prefix: str = "") -> Iterator[str]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern)

    after_an_id = [
        route.rsplit("<id:", 1)[1].partition(">")[2] for route in routes(get_resolver().url_patterns) if "<id:" in route
    ]
    suffixes = {suffix.strip("/") for suffix in after_an_id if suffix}
    assert "export" in suffixes
    assert suffixes <= SUBRESOURCE_NAMES


@pytest.mark.parametrize("raw", [".", "..", "./x", "x/.", "a/./b", "a/../b", "../etc"])
def test_an_id_with_a_dot_segment_is_refused_naming_the_field(api: APIClient, raw: str) -> None:
    """HTTP clients resolve "." and ".." segments out of a path before sending it (``requests`` sent the erasure of
    customer ``..`` as ``DELETE /v1/``, the export of ``.`` as ``GET /v1/customers/export``: another customer's
    record; an eleventh tester, 6 December): such ids are refused wherever an id comes in."""
    ItemFactory(external_id="i1")
    for field in ("customer_id", "session_id", "item_id"):
        event = {"customer_id": "c1", "item_id": "i1", "type": "view", field: raw}
        response = api.post("/v1/events", {"events": [event]}, format="json")
        (rejected,) = response.json()["rejected"]
        assert list(rejected["errors"]) == [field]
        assert '"." or ".." segment' in rejected["errors"][field][0]
    assert not Customer.objects.filter(external_id=raw).exists()


@pytest.mark.parametrize("fine", ["...", ".x", "x.", "a/.../b", "v1.2/x", "a..b"])
def test_dots_that_are_no_whole_segment_are_ordinary_ids(api: APIClient, fine: str) -> None:
    assert api.put(f"/v1/customers/{quote(fine, safe='')}", {}, format="json").status_code == 201, fine
    assert api.get(f"/v1/customers/{quote(fine, safe='')}").json()["customer_id"] == fine
