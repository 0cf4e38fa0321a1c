"""CORS for browser storefronts on another origin (API_CORS_ORIGINS, django-cors-headers): a preflight is answered
before authentication (a browser sends it without the key), only for the origins named, only on the API's paths.
Before, the preflight of a cross-origin event was a 401 without any Access-Control header (a tenth tester,
6 December)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import ItemFactory

SHOP = "https://shop.example"
PREFLIGHT = {
    "HTTP_ORIGIN": SHOP,
    "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
    "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "authorization,content-type",
}


@pytest.mark.django_db
def test_a_named_origin_may_call_the_api_from_a_browser(settings: Any, api: APIClient) -> None:
    settings.CORS_ALLOWED_ORIGINS = [SHOP]
    preflight = Client().options("/v1/events", **PREFLIGHT)  # no key: browsers send none
    assert preflight.status_code == 200
    assert preflight["Access-Control-Allow-Origin"] == SHOP
    assert {"authorization", "content-type"} <= set(preflight["Access-Control-Allow-Headers"].split(", "))
    assert "POST" in preflight["Access-Control-Allow-Methods"]
    ItemFactory(external_id="sku-1")
    sent = api.post("/v1/events", {"session_id": "s1", "item_id": "sku-1", "type": "view"}, format="json",
                    HTTP_ORIGIN=SHOP)  # fmt: skip
    assert sent.status_code == 202
    assert sent["Access-Control-Allow-Origin"] == SHOP
    assert "Retry-After" in sent["Access-Control-Expose-Headers"]


@pytest.mark.django_db
def test_other_origins_and_other_paths_get_no_cors_headers(settings: Any) -> None:
    settings.CORS_ALLOWED_ORIGINS = [SHOP]
    other = Client().options("/v1/events", **{**PREFLIGHT, "HTTP_ORIGIN": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other
    admin = Client().options("/admin/login/", **PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in admin
    settings.CORS_ALLOWED_ORIGINS = []  # the default: same-origin only
    assert "Access-Control-Allow-Origin" not in Client().options("/v1/events", **PREFLIGHT)
