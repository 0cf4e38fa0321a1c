"""kernel.middleware.BrowserMiddleware: the browser middleware (sessions, CSRF, logins, messages, framing, lockouts)
runs for the admin and the pages, not for the JSON API; the system check asks for it in either list."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client, override_settings
from rest_framework.test import APIClient

from kernel.middleware import check_browser_middleware

pytestmark = pytest.mark.django_db


def test_the_admin_gets_the_browser_middleware() -> None:
    response = Client().get("/admin/login/")
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"  # clickjacking
    assert settings.CSRF_COOKIE_NAME in response.cookies  # CSRF, which the login form needs
    # The CSRF check itself runs (process_view, forwarded by BrowserMiddleware): a POST without the token is refused.
    refused = Client(enforce_csrf_checks=True).post("/admin/login/", {"username": "x", "password": "y"})
    assert refused.status_code == 403


def test_the_api_skips_it_and_keeps_the_rest(api: APIClient) -> None:
    response = api.get("/v1/recommendations", {"count": 3})
    assert response.status_code == 200
    assert "X-Frame-Options" not in response
    assert not response.cookies
    assert "Cookie" not in response.get("Vary", "")  # no session was looked at
    assert response["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware runs for every path


def test_the_check_asks_for_the_browser_middleware_in_either_list() -> None:
    assert check_browser_middleware() == []
    without_axes = [path for path in settings.BROWSER_MIDDLEWARE if "axes" not in path]
    with override_settings(BROWSER_MIDDLEWARE=without_axes):
        assert [error.id for error in check_browser_middleware()] == ["kernel.E001"]
    flat = [path for path in settings.MIDDLEWARE if "BrowserMiddleware" not in path] + settings.BROWSER_MIDDLEWARE
    with override_settings(MIDDLEWARE=flat):  # the plain Django way also passes
        assert check_browser_middleware() == []
