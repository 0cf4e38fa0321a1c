"""The storefront's pages without a browser: friendly answers when the API has nothing or cannot be reached,
and the demo keys (created once, kept in a file, re-created when gone; the page's key can only send events)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from kernel.api_keys import api_key_revoke, hash_key
from kernel.models import ApiKey
from storefront import views as storefront
from tests.browser.support import SHELVES, customer_id


def _fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the test's own live server)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_an_empty_shop_says_so_instead_of_failing(live_server: Any) -> None:
    status, html = _fetch(f"{live_server.url}/")
    assert status == 200
    assert "Nothing to recommend yet" in html
    assert "Online Retail" in html
    assert "CC BY 4.0" in html


def test_an_unknown_item_is_a_friendly_404(live_server: Any) -> None:
    status, html = _fetch(f"{live_server.url}/items/no-such-item")
    assert status == 404
    assert "We could not find that item." in html
    assert "storefront-config" not in html  # no buttons, no events for an item that does not exist


@pytest.mark.django_db
def test_an_unreachable_api_is_a_friendly_message_not_a_500(client: Client) -> None:
    # The page calls its own server at the request's host; port 9 (discard) on 127.0.0.1 refuses the connection.
    home = client.get("/", SERVER_NAME="127.0.0.1", SERVER_PORT="9")
    assert home.status_code == 200
    assert "is not answering right now" in home.content.decode()
    item = client.get("/items/20001", SERVER_NAME="127.0.0.1", SERVER_PORT="9")
    assert item.status_code == 503
    assert "is not answering right now" in item.content.decode()


@pytest.mark.django_db
def test_the_picker_remembers_the_customer_and_only_redirects_home(client: Client) -> None:
    chosen = client.post("/customer", {"customer_id": "17850", "next": "/items/20001?rid=abc"})
    assert chosen.status_code == 302
    assert chosen["Location"] == "/items/20001?rid=abc"
    assert chosen.cookies[storefront.CUSTOMER_COOKIE].value == "17850"
    elsewhere = client.post("/customer", {"customer_id": "", "next": "https://evil.example/"})
    assert elsewhere["Location"] == "/"
    assert elsewhere.cookies[storefront.CUSTOMER_COOKIE].value == ""  # deleted: an anonymous visitor again


@pytest.mark.django_db
def test_demo_keys_are_made_once_kept_in_a_file_and_remade_when_gone(tmp_path: Path) -> None:
    keys = storefront.storefront_keys()
    stored = json.loads(storefront.KEYS_FILE.read_text())
    assert stored == {"server": keys.server, "browser": keys.browser}
    assert storefront.KEYS_FILE.stat().st_mode & 0o777 == 0o600
    server_key = ApiKey.objects.get(key_hash=hash_key(keys.server))
    browser_key = ApiKey.objects.get(key_hash=hash_key(keys.browser))
    assert server_key.scopes == ["catalog", "events", "recommend"]
    assert browser_key.scopes == ["events"]  # the only key a page ever shows

    storefront.clear_caches()
    assert storefront.storefront_keys() == keys  # read back from the file, nothing new created
    assert ApiKey.objects.count() == 2

    api_key_revoke(key_id=browser_key.pk)
    renewed = storefront.storefront_keys(refresh=True)
    assert renewed.server == keys.server
    assert renewed.browser != keys.browser
    assert json.loads(storefront.KEYS_FILE.read_text())["browser"] == renewed.browser


def test_the_picker_offers_the_most_active_customers_from_the_public_api(
    live_server: Any, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storefront asks GET /v1/customers like any client would, never the database."""
    paths: list[str] = []
    original = storefront.api_get

    def recording(request: Any, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        paths.append(path)
        return original(request, path, params)

    monkeypatch.setattr(storefront, "api_get", recording)
    status, html = _fetch(f"{live_server.url}/")
    assert status == 200
    assert "/v1/customers" in paths
    picker = html.split('name="customer_id"', 1)[1].split("</select>", 1)[0]
    # The first customer of each shelf bought ten items, everyone else five: those four lead the list.
    leaders = [customer_id(shelf, 0) for shelf in range(len(SHELVES))]
    offered = [chunk.split('"', 1)[0] for chunk in picker.split('<option value="')[2:]]
    assert offered[:4] == sorted(leaders)
    assert "10 purchases" in picker
    assert len(offered) == storefront.PICKER_SIZE
