"""JSON types in request bodies (docs/api.md, "Input rules"; kernel.validation.BodySerializer): a number field takes
only a JSON number, a string field only a JSON string, a true/false field only true or false. An eleventh tester
found ``"count": "5"``, ``"days": true`` and a widget ``"surface": 5`` coerced by DRF's fields while body ids refused
a number; every body of the API now refuses them with a 400 naming the field, beside the other fields' errors.
Query strings are text by nature and keep their parsing (``?count=5``).

Through the test client, on the real Postgres and Redis: each case is sent with the wrong type (a 400 naming the
field, nothing stored) and with the right one (not refused for that field)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.utils import PolymorphicProxySerializer
from rest_framework.serializers import ListSerializer, Serializer
from rest_framework.test import APIClient

from catalog.models import Customer, Item
from events.models import Interaction
from kernel.validation import BodySerializer
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db

NUMBER, STRING, BOOLEAN = "Must be a number.", "Must be a string.", "Must be true or false."
_PAGE = {"widgets": [{"kind": "recommendations"}]}
_ITEM = {"title": "Mug"}
_EVENT = {"customer_id": "c1", "item_id": "sku-1", "type": "purchase"}

# (method, path, scope, the body without the field, where the field goes, the wrong value, the error as answered
# (DRF's shape: a page's widgets one entry per widget; a list element by its path), a value of the right type)
CASES: list[tuple[str, str, str, dict[str, Any], tuple[Any, ...], Any, dict[str, Any], Any]] = [
    # POST /v1/pages: the tester's cases, and every other typed field of a widget or the page
    ("post", "/v1/pages", "recommend", _PAGE, ("widgets", 0, "count"), "5", {"widgets": [{"count": [NUMBER]}]}, 5),
    ("post", "/v1/pages", "recommend", _PAGE, ("widgets", 0, "count"), True, {"widgets": [{"count": [NUMBER]}]}, 5.0),
    ("post", "/v1/pages", "recommend", _PAGE, ("widgets", 0, "surface"), 5, {"widgets": [{"surface": [STRING]}]},
     "home"),
    ("post", "/v1/pages", "recommend", _PAGE, ("widgets", 0, "kind"), 5, {"widgets": [{"kind": [STRING]}]},
     "recommendations"),
    ("post", "/v1/pages", "recommend", {"widgets": [{"kind": "because_you_viewed"}]}, ("widgets", 0, "groups"), "2",
     {"widgets": [{"groups": [NUMBER]}]}, 2),
    ("post", "/v1/pages", "recommend", _PAGE, ("customer_id",), 42, {"customer_id": [STRING]}, "c42"),
    ("post", "/v1/pages", "recommend", _PAGE, ("exclude_request_ids",), [7], {"exclude_request_ids[0]": [STRING]},
     ["r-7"]),
    # POST /v1/rules/dry-runs (a rule that does not exist: the right types reach that check, no run is queued)
    ("post", "/v1/rules/dry-runs", "admin", {"rule_id": 999999}, ("days",), True, {"days": [NUMBER]}, 7),
    ("post", "/v1/rules/dry-runs", "admin", {"rule_id": 999999}, ("days",), "7", {"days": [NUMBER]}, 7.5),
    ("post", "/v1/rules/dry-runs", "admin", {"rule_id": 999999}, ("sample",), "100", {"sample": [NUMBER]}, 100),
    ("post", "/v1/rules/dry-runs", "admin", {}, ("rule_id",), "999999", {"rule_id": [NUMBER]}, 999999),
    # PUT /v1/items/{id}
    ("put", "/v1/items/sku-new", "catalog", {}, ("title",), 5, {"title": [STRING]}, "Mug"),
    ("put", "/v1/items/sku-new", "catalog", _ITEM, ("description",), 1.5, {"description": [STRING]}, "Blue"),
    ("put", "/v1/items/sku-new", "catalog", _ITEM, ("in_stock",), "false", {"in_stock": [BOOLEAN]}, False),
    ("put", "/v1/items/sku-new", "catalog", _ITEM, ("active",), 1, {"active": [BOOLEAN]}, True),
    ("put", "/v1/items/sku-new", "catalog", _ITEM, ("created_at",), 1_700_000_000, {"created_at": [STRING]},
     "2024-01-01T00:00:00Z"),
    ("put", "/v1/items/sku-new", "catalog", _ITEM, ("category",), 5, {"category": [STRING]}, "kitchen"),
    ("put", "/v1/items/sku-new", "catalog", _ITEM, ("tags",), ["red", 2], {"tags[1]": [STRING]}, ["red", "2"]),
    # PUT /v1/customers/{id}
    ("put", "/v1/customers/c-new", "catalog", {}, ("personalisation_opt_out",), "true",
     {"personalisation_opt_out": [BOOLEAN]}, True),
    # POST /v1/events (validated by events.validation, under the same rule)
    ("post", "/v1/events", "events", _EVENT, ("value",), "5", {"value": [NUMBER]}, 5),
    ("post", "/v1/events", "events", _EVENT, ("value",), True, {"value": [NUMBER]}, 2.5),
    ("post", "/v1/events", "events", _EVENT, ("value",), "", {"value": [NUMBER]}, None),
    ("post", "/v1/events", "events", _EVENT, ("type",), 4, {"type": [STRING]}, "purchase"),
    # POST /v1/sessions/{id}/merge
    ("post", "/v1/sessions/s1/merge", "events", {}, ("customer_id",), 42, {"customer_id": [STRING]}, "c42"),
]  # fmt: skip


def _with(body: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    return out


def _stored() -> tuple[int, int, int]:
    return Item.objects.count(), Customer.objects.count(), Interaction.objects.count()


@pytest.mark.parametrize(
    ("method", "path", "scope", "body", "where", "wrong", "errors", "right"),
    CASES,
    ids=[f"{c[0]} {c[1]} {'.'.join(map(str, c[4]))}={c[5]!r}" for c in CASES],
)
def test_a_body_field_of_the_wrong_json_type_is_a_400_naming_it(
    make_api_client: Any,
    method: str,
    path: str,
    scope: str,
    body: dict[str, Any],
    where: tuple[Any, ...],
    wrong: Any,
    errors: dict[str, Any],
    right: Any,
) -> None:
    ItemFactory(external_id="sku-1")
    client: APIClient = make_api_client(scope)
    before = _stored()

    refused = getattr(client, method)(path, _with(body, where, wrong), format="json")

    assert refused.status_code == 400, refused.content
    assert refused.json() == errors
    assert _stored() == before

    taken = getattr(client, method)(path, _with(body, where, right), format="json")
    if taken.status_code == 400:  # another check may refuse the body (an unknown rule), never this field's type
        assert taken.json() != errors
        assert "Must be" not in str(taken.json()), taken.json()
    else:
        assert taken.status_code < 300, taken.content


def test_every_mistake_of_a_body_is_named_at_once(api: APIClient) -> None:
    response = api.put("/v1/items/sku-new", {"title": 5, "price": -1, "in_stock": "yes", "tags": [1, "ok", "b\x1b"]},
                       format="json")  # fmt: skip
    assert response.status_code == 400
    assert response.json() == {
        "title": [STRING],
        "price": ["Ensure this value is greater than or equal to 0."],
        "in_stock": [BOOLEAN],
        "tags[0]": [STRING],
        "tags[2]": ["Contains U+001B (a control character) at position 2: no control or invisible characters."],
    }
    page = api.post("/v1/pages", {"widgets": [{"kind": "nope"}, {"kind": "similar", "count": "3"}]}, format="json")
    assert page.status_code == 400
    assert page.json() == {"widgets": [{"kind": ['"nope" is not a valid choice.']}, {"count": [NUMBER]}]}


def test_a_batch_names_each_event_whose_value_is_no_number(api: APIClient) -> None:
    ItemFactory(external_id="sku-1")
    events = [_EVENT | {"value": 1}, _EVENT | {"value": "1"}, _EVENT | {"value": [1]}, _EVENT | {"value": 1e-9}]
    response = api.post("/v1/events", {"events": events}, format="json")
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"index": 1, "errors": {"value": [NUMBER]}},
        {"index": 2, "errors": {"value": [NUMBER]}},
    ]


def test_query_strings_keep_their_text_parsing(api: APIClient) -> None:
    ItemFactory(external_id="sku-1")
    assert api.get("/v1/recommendations", {"count": "5", "debug": "false"}).status_code == 200
    assert api.get("/v1/items/sku-1/similar", {"count": "3"}).status_code == 200
    assert api.get("/v1/recommendations", {"count": "x"}).json() == {"count": ["A valid integer is required."]}


def _request_serializers() -> list[tuple[str, str, Any]]:
    """(method, path, serializer class) of every /v1/ operation that reads a body, as its schema declares it."""
    generator = SchemaGenerator()
    generator._initialise_endpoints()
    found: list[tuple[str, str, Any]] = []
    for path, path_regex, method, view in generator._get_paths_and_endpoints():
        if method not in ("POST", "PUT", "PATCH") or not path.startswith("/v1/"):
            continue
        view.schema.get_operation(path, path_regex, "/v1/", method, generator.registry)
        request = view.schema.get_request_serializer()
        if request is None:
            continue
        parts = request.serializers if isinstance(request, PolymorphicProxySerializer) else [request]
        found.extend((method, path, part if isinstance(part, type) else type(part)) for part in parts)
    return found


def test_every_request_body_of_the_api_is_a_body_serializer() -> None:
    found = _request_serializers()
    assert {(m, p) for m, p, _ in found} >= {
        ("PUT", "/v1/items/{item_id}"), ("PUT", "/v1/customers/{customer_id}"), ("POST", "/v1/events"),
        ("POST", "/v1/sessions/{session_id}/merge"), ("POST", "/v1/pages"), ("POST", "/v1/rules/dry-runs"),
    }  # fmt: skip
    plain = [(m, p, s.__name__) for m, p, top in found for s in _nested(top) if not issubclass(s, BodySerializer)]
    assert plain == []


def _nested(serializer: type[Serializer]) -> list[type[Serializer]]:
    """The serializer and every serializer nested in its fields (a page's widgets), depth first."""
    out = [serializer]
    for field in serializer().fields.values():
        child = field.child if isinstance(field, ListSerializer) else field
        if isinstance(child, Serializer):
            out.extend(_nested(type(child)))
    return out
