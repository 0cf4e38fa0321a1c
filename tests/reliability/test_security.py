"""Who gets in and how much: every /v1/ endpoint (found from the URL resolver, so a new one cannot slip by) needs a
key with its scope; the admin needs a staff login; per-customer rate limits; request size limits answered in JSON."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from kernel.auth import ApiKeyAuthentication, HasScope
from kernel.models import ApiKey
from tests.factories import CustomerFactory, ItemFactory

pytestmark = pytest.mark.django_db

SCOPES = set(ApiKey.Scope.values) - {ApiKey.Scope.ADMIN}


def _routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> Iterator[tuple[str, type]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif route.startswith("v1/"):
            yield route, pattern.callback.view_class  # type: ignore[attr-defined]


# The first pattern of a route is the one Django serves (privacy.api.CustomerApi takes over the catalog's).
V1 = sorted(dict(reversed(list(_routes(get_resolver().url_patterns)))).items())
ENDPOINTS = [
    (route, view, method)
    for route, view in V1
    for method in ("get", "post", "put", "patch", "delete")
    if hasattr(view, method)
]


def _url(route: str) -> str:
    return "/" + re.sub(r"<(?:\w+:)?\w+>", "x", route)


def test_the_walk_finds_every_v1_endpoint() -> None:
    routes = {route for route, _ in V1}
    assert {"v1/events", "v1/recommendations", "v1/customers/<id:customer_id>", "v1/items/<id:item_id>"} <= routes
    assert len(ENDPOINTS) >= 14


@pytest.mark.parametrize(("route", "view", "method"), ENDPOINTS, ids=[f"{m.upper()} {r}" for r, _, m in ENDPOINTS])
def test_every_v1_endpoint_needs_a_key_with_its_scope(
    make_api_client: Callable[..., APIClient], route: str, view: type, method: str
) -> None:
    assert ApiKeyAuthentication in view.authentication_classes
    assert HasScope in view.permission_classes
    scope = getattr(view, "required_scope", ApiKey.Scope.ADMIN)

    response = getattr(APIClient(), method)(_url(route), {}, format="json")
    assert response.status_code == 401, response.content
    assert response.json() == {"detail": "Authentication credentials were not provided."}

    lacking = make_api_client(*sorted(SCOPES - {scope}))
    response = getattr(lacking, method)(_url(route), {}, format="json")
    assert response.status_code == 403, response.content
    assert response.json() == {"detail": f"This API key lacks the '{scope}' scope."}


def test_admin_needs_a_staff_login() -> None:
    response = Client().get("/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/"
    shopper = Client()
    shopper.force_login(User.objects.create_user("shopper", password="not-staff-pw-123"))
    assert shopper.get("/admin/kernel/apikey/").status_code == 302
    staff = Client()
    staff.force_login(User.objects.create_user("merch", password="staff-pw-123", is_staff=True, is_superuser=True))
    assert staff.get("/admin/kernel/apikey/").status_code == 200


# --- Per-customer rate limits -------------------------------------------------------------------------------


@pytest.fixture
def one_window() -> None:
    """The limits count per clock minute: start well inside one, so the test never straddles two."""
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60 + 0.05)


@override_settings(API_CUSTOMER_RATE_PER_MINUTE=3)
def test_recommendations_are_limited_per_customer_and_key(
    one_window: None, make_api_client: Callable[..., APIClient]
) -> None:
    storefront = make_api_client("recommend")
    statuses = [storefront.get("/v1/recommendations", {"customer_id": "c1"}).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = storefront.get("/v1/recommendations", {"customer_id": "c1"})
    assert 0 < int(response["Retry-After"]) <= 60
    assert "throttled" in response.json()["detail"].lower()
    # Another customer, an anonymous visitor and another key are not held back by c1.
    assert storefront.get("/v1/recommendations", {"customer_id": "c2"}).status_code == 200
    assert storefront.get("/v1/recommendations").status_code == 200
    assert make_api_client("recommend").get("/v1/recommendations", {"customer_id": "c1"}).status_code == 200
    # The path names the customer too.
    assert storefront.get("/v1/customers/c1/because-you-viewed").status_code == 429


@override_settings(API_CUSTOMER_RATE_PER_MINUTE=3)
def test_events_are_limited_per_customer_named_in_the_body(one_window: None, api: APIClient) -> None:
    ItemFactory(external_id="sku-1")

    def event(customer: str, n: int) -> dict[str, str]:
        return {"event_id": f"{customer}-{n}", "customer_id": customer, "item_id": "sku-1", "type": "view"}

    # A batch counts once for each customer it names, whatever the number of their events in it.
    batch = {"events": [event("a", n) for n in range(10)] + [event("b", 0)]}
    assert api.post("/v1/events", batch, format="json").status_code == 202
    assert api.post("/v1/events", event("a", 10), format="json").status_code == 202
    assert api.post("/v1/events", {"events": [event("a", 11), event("c", 0)]}, format="json").status_code == 202
    response = api.post("/v1/events", {"events": [event("b", 1), event("a", 12)]}, format="json")
    assert response.status_code == 429
    assert "Retry-After" in response
    assert api.post("/v1/events", event("b", 2), format="json").status_code == 202


def test_a_bad_body_is_still_reported_by_the_view_after_the_throttle_read_it(api: APIClient) -> None:
    response = api.post("/v1/events", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")


@override_settings(API_CUSTOMER_RATE_PER_MINUTE=1)
def test_catalog_endpoints_are_not_limited_per_customer(one_window: None, api: APIClient) -> None:
    CustomerFactory(external_id="c1")
    assert [api.get("/v1/customers/c1").status_code for _ in range(3)] == [200, 200, 200]


# --- Request size -------------------------------------------------------------------------------------------

THREE_MB = 3 * 1024 * 1024


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/v1/events"), ("put", "/v1/customers/c1"), ("put", "/v1/items/sku-1"), ("post", "/v1/sessions/s/merge")],
)
def test_a_3_mb_body_is_refused_with_413_in_json(admin_api: APIClient, method: str, path: str) -> None:
    body = b'{"attributes": {"x": "' + b"a" * THREE_MB + b'"}}'
    response = getattr(admin_api, method)(path, data=body, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "The request body is larger than 2,097,152 bytes."}


def test_a_body_under_the_limit_is_accepted(admin_api: APIClient) -> None:
    response = admin_api.put("/v1/customers/c1", {"attributes": {"x": "a" * 1_000_000}}, format="json")
    assert response.status_code == 201


# --- Text that is not text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/events", r'{"customer_id": "a\ud800", "item_id": "sku-1", "type": "view"}'),
        ("post", "/v1/events", r'{"events": [{"session_id": "s", "item_id": "sku\udfff", "type": "view"}]}'),
        ("put", "/v1/customers/c1", r'{"attributes": {"k": "\ud800"}}'),
    ],
)
def test_a_lone_surrogate_is_a_400_not_a_500(admin_api: APIClient, method: str, path: str, body: str) -> None:
    ItemFactory(external_id="sku-1")
    response = getattr(admin_api, method)(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert "lone surrogate" in str(response.json())


def test_an_escaped_emoji_is_text(api: APIClient) -> None:
    ItemFactory(external_id="sku-1")
    body = r'{"customer_id": "smile-\ud83d\ude00", "item_id": "sku-1", "type": "view"}'
    assert api.post("/v1/events", data=body, content_type="application/json").status_code == 202


def test_a_nul_character_postgres_cannot_store_is_a_400_not_a_503(api: APIClient) -> None:
    ItemFactory(external_id="sku-1")
    response = api.post("/v1/events", {"customer_id": "a\x00b", "item_id": "sku-1", "type": "view"}, format="json")
    assert response.status_code == 400
    assert "Retry-After" not in response
    assert api.get("/v1/customers/a%00b/export").json() == {"customer_id": ["Null characters are not allowed."]}
