"""API keys: missing, wrong, revoked and under-scoped keys are refused with JSON; throttles count per key."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from kernel import auth
from kernel.api_keys import api_key_create, api_key_revoke, hash_key
from kernel.models import ApiKey
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


def test_missing_key_is_401_with_json_and_challenge() -> None:
    response = APIClient().get("/v1/items/anything")
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer rk_not-a-real-key", "Token abc", "Bearer", "Bearer two words"])
def test_wrong_or_malformed_key_is_401(header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/v1/items/anything")
    assert response.status_code == 401
    assert "detail" in response.json()


def test_key_without_the_scope_is_403_naming_the_scope(make_api_client) -> None:
    response = make_api_client("recommend").get("/v1/items/anything")
    assert response.status_code == 403
    assert response.json() == {"detail": "This API key lacks the 'catalog' scope."}


def test_admin_scope_implies_every_scope(make_api_client) -> None:
    ItemFactory(external_id="sku-1")
    assert make_api_client("admin").get("/v1/items/sku-1").status_code == 200


def test_revoked_key_stops_working() -> None:
    key, plaintext = api_key_create(name="storefront", scopes=["catalog"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert client.get("/v1/items/x").status_code == 404
    api_key_revoke(key_id=key.pk)
    auth.clear_cache()  # other processes see it within the cache's few seconds
    assert client.get("/v1/items/x").status_code == 401


def test_keys_are_stored_hashed_and_last_use_recorded() -> None:
    key, plaintext = api_key_create(name="storefront", scopes=["catalog"])
    key.refresh_from_db()
    assert plaintext not in (key.key_hash, key.prefix)
    assert key.key_hash == hash_key(plaintext)
    assert key.last_used_at is None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    client.get("/v1/items/x")
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        api_key_create(name="x", scopes=["everything"])


def test_throttle_answers_429_with_retry_after_per_key(make_api_client) -> None:
    limited = make_api_client("catalog", rate_per_minute=3)
    other = make_api_client("catalog", rate_per_minute=3)
    statuses = [limited.get("/v1/items/x").status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]
    response = limited.get("/v1/items/x")
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 60
    assert "throttled" in response.json()["detail"].lower()
    # The limit is per key: another key is unaffected.
    assert other.get("/v1/items/x").status_code == 404


def test_create_api_key_command_prints_a_working_key() -> None:
    out = StringIO()
    call_command("create_api_key", "cli storefront", "--scope", "catalog", stdout=out, stderr=StringIO())
    plaintext = out.getvalue().strip()
    assert ApiKey.objects.get(name="cli storefront").scopes == ["catalog"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert client.get("/v1/items/x").status_code == 404


@pytest.mark.parametrize("rate", ["0", "-5", "99999999999"])
def test_create_api_key_refuses_a_rate_outside_its_range(rate: str) -> None:
    """0 was stored and meant the default limit (not "blocked"); a negative or huge rate was a raw database error."""
    with pytest.raises(CommandError, match="rate_per_minute must be from 1 to"):
        call_command("create_api_key", "bad rate", "--rate-per-minute", rate, stdout=StringIO(), stderr=StringIO())
    assert not ApiKey.objects.filter(name="bad rate").exists()


@pytest.mark.parametrize("name", ["", "x" * 101, "bell\x07"])
def test_create_api_key_refuses_a_name_it_cannot_store_or_show(name: str) -> None:
    with pytest.raises(CommandError, match="the name must be 1 to 100 printable characters"):
        call_command("create_api_key", name, stdout=StringIO(), stderr=StringIO())


@pytest.mark.django_db
def test_the_admin_names_a_key_name_it_cannot_store(admin_client: Any) -> None:
    response = admin_client.post(
        "/admin/kernel/apikey/add/", {"name": "bell\x07", "scopes": ["recommend"], "rate_per_minute": ""}
    )
    assert response.status_code == 200  # the form again, with the error (it was a 500)
    assert b"printable characters" in response.content
    assert not ApiKey.objects.exists()
