"""The demo storefront: a few server-rendered pages (home, item) that show the platform from a shopper's side.

It is built the way a real storefront would be: the pages get everything from the public ``/v1/`` API over HTTP
with a demo API key, and the browser sends real events to ``POST /v1/events`` with an events-only key. It is a
showcase, not a shop: no accounts, no payments, and any API failure renders a friendly message, never a 500.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST, require_safe

from kernel.api_keys import api_key_create, hash_key
from kernel.models import ApiKey
from kernel.validation import id_problem
from storefront.demo.categories import CATEGORY_NAMES

logger = logging.getLogger(__name__)

# Plaintext of the two demo keys; under var/ (gitignored), like var/demo_api_key. Tests point it elsewhere.
KEYS_FILE = Path(settings.BASE_DIR) / "var" / "storefront_keys.json"
SERVER_SCOPES = ("catalog", "events", "recommend")
BROWSER_SCOPES = ("events",)
# The views call their own server: a short timeout bounds what a stuck API costs a page.
API_TIMEOUT_SECONDS = 3.0
CUSTOMER_COOKIE = "sf_customer"
SESSION_COOKIE = "sf_session"
COOKIE_MAX_AGE = 30 * 24 * 3600
HOME_COUNT = 12
ROW_COUNT = 5  # a row of five fits a desktop screen; a phone scrolls it sideways
PICKER_SIZE = 6
PICKER_TTL_SECONDS = 300.0
MAX_ID = 100


# --- Demo API keys ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorefrontKeys:
    server: str  # recommend + events + catalog: used by the Django views only, never sent to a browser
    browser: str  # events only: embedded in the pages for the buttons' fetch calls


_keys: StorefrontKeys | None = None
_keys_checked_at = 0.0
_keys_lock = threading.Lock()
# Keys are re-checked this often, so one revoked in the admin (say, the browser's) is replaced within a minute.
KEYS_RECHECK_SECONDS = 60.0


def _key_is_live(plaintext: object) -> bool:
    return (
        isinstance(plaintext, str)
        and ApiKey.objects.filter(key_hash=hash_key(plaintext), revoked_at__isnull=True).exists()
    )


def storefront_keys(*, refresh: bool = False) -> StorefrontKeys:
    """The demo keys, created on first use and kept in ``KEYS_FILE``; a key whose hash is no longer in the
    database (a fresh database, a revoked key) is re-created. ``refresh`` re-checks after the API said 401."""
    global _keys, _keys_checked_at
    with _keys_lock:
        now = time.monotonic()
        if _keys is not None and not refresh and now - _keys_checked_at < KEYS_RECHECK_SECONDS:
            return _keys
        try:
            stored = json.loads(KEYS_FILE.read_text())
        except (OSError, ValueError):
            stored = {}
        if not isinstance(stored, dict):
            stored = {}
        keys: dict[str, str] = {}
        changed = False
        for role, scopes in (("server", SERVER_SCOPES), ("browser", BROWSER_SCOPES)):
            plaintext = stored.get(role)
            if not _key_is_live(plaintext):
                _, plaintext = api_key_create(name=f"demo storefront ({role})", scopes=scopes)
                changed = True
            keys[role] = str(plaintext)
        if changed:
            KEYS_FILE.parent.mkdir(parents=True, exist_ok=True)
            partial = KEYS_FILE.with_name(f"{KEYS_FILE.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(keys, indent=2) + "\n")
            partial.chmod(0o600)
            partial.replace(KEYS_FILE)  # atomic: another process never reads half a file
            logger.info("storefront_keys_created", extra={"path": str(KEYS_FILE)})
        _keys = StorefrontKeys(server=keys["server"], browser=keys["browser"])
        _keys_checked_at = now
        return _keys


# --- The API over HTTP --------------------------------------------------------------------------------------


class ApiError(Exception):
    """The API did not answer with a usable body; ``message`` is fit for a shopper."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _friendly(status: int | None) -> str:
    if status is None:
        return "The recommendation service is not answering right now. Please try again in a moment."
    if status == 404:
        return "We could not find that."
    if status == 429:
        return "The shop is busy right now. Please try again in a moment."
    if status in (401, 403):
        return "The storefront's API key was not accepted."
    return "Something went wrong on our side while fetching this. Please try again."


def api_get(request: HttpRequest, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET ``path`` from this same server's public API with the storefront's server key (one retry with fresh
    keys when the key is refused, e.g. after the database was reset)."""
    query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v not in (None, "")})
    return _api_call(request, path, query=query)


def api_post(request: HttpRequest, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` as JSON to ``path`` of this same server's public API, as :func:`api_get` asks."""
    return _api_call(request, path, body=json.dumps(body).encode())


def _api_call(request: HttpRequest, path: str, *, query: str = "", body: bytes | None = None) -> dict[str, Any]:
    url = request.build_absolute_uri(path) + (f"?{query}" if query else "")
    for attempt in range(2):
        keys = storefront_keys(refresh=attempt > 0)
        headers = {"Authorization": f"Bearer {keys.server}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        call = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 (this very server's URL)
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(call, timeout=API_TIMEOUT_SECONDS) as response:  # noqa: S310 (same)
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and attempt == 0:
                continue
            logger.warning("storefront_api_error", extra={"path": path, "status": exc.code})
            raise ApiError(_friendly(exc.code), status=exc.code) from exc
        except (OSError, ValueError) as exc:  # URLError, refused, timed out; or a body that is not JSON
            logger.warning(
                "storefront_api_unreachable",
                extra={"path": path, "error": str(exc), "ms": round((time.perf_counter() - started) * 1000)},
            )
            raise ApiError(_friendly(None)) from exc
    raise ApiError(_friendly(401), status=401)  # pragma: no cover - the loop returns or raises


# --- What the templates show ---------------------------------------------------------------------------------


def category_label(category: str | None) -> str:
    """A person's name for a category id: the demo's names ("Kitchen & dining"), else the id made readable."""
    if not category:
        return ""
    return CATEGORY_NAMES.get(category) or category.replace("-", " ").replace("_", " ").capitalize()


def _price(value: object) -> str:
    try:
        return f"£{float(str(value)):,.2f}"
    except (TypeError, ValueError):
        return ""


@dataclass(frozen=True)
class Card:
    item_id: str
    title: str
    category: str
    price: str
    reason: str
    reason_kind: str  # a CSS hint: because, trending, popular, featured, together, new, discover
    url: str


@dataclass(frozen=True)
class Row:
    heading: str
    request_id: str
    cards: tuple[Card, ...]
    anchor_item_id: str = ""

    @property
    def common_reason(self) -> str:
        """The reason every card shares (e.g. "Frequently bought with X"): said once, not on every card."""
        reasons = {card.reason for card in self.cards}
        return reasons.pop() if len(reasons) == 1 and len(self.cards) > 1 else ""


def _reason_kind(code: str) -> str:
    if code.startswith("because") or code == "for_you":
        return "because"
    for prefix, kind in (("trending", "trending"), ("featured", "featured"), ("new", "new"), ("discover", "discover")):
        if code.startswith(prefix):
            return kind
    if code in ("bought_together", "also_liked"):
        return "together"
    if code.startswith("similar"):
        return "similar"
    return "popular"


def _item_url(item_id: str) -> str:
    # Quoted by hand rather than reversed: an id the URL pattern cannot take (one with a "/") must give a link
    # that answers 404, not a page that fails to render.
    return reverse("storefront:home") + "items/" + urllib.parse.quote(item_id, safe="")


def _cards(items: list[dict[str, Any]], *, request_id: str, surface: str) -> tuple[Card, ...]:
    cards = []
    for item in items:
        # The link carries the list's request_id so the item page can send a click attributed to this list.
        url = _item_url(item["item_id"]) + "?" + urllib.parse.urlencode({"rid": request_id, "from": surface})
        reason = item.get("reason") or {}
        cards.append(
            Card(
                item_id=item["item_id"], title=item.get("title") or item["item_id"],
                category=category_label(item.get("category")), price=_price(item.get("price")),
                reason=reason.get("text", ""), reason_kind=_reason_kind(reason.get("code", "")), url=url,
            )
        )  # fmt: skip
    return tuple(cards)


@dataclass(frozen=True)
class Shopper:
    """Who is browsing: a demo customer chosen in the picker, or an anonymous visitor with a session cookie."""

    customer_id: str
    session_id: str
    new_session: bool = False


def _shopper(request: HttpRequest) -> Shopper:
    customer_id = request.COOKIES.get(CUSTOMER_COOKIE, "").strip()[:MAX_ID]
    session_id = request.COOKIES.get(SESSION_COOKIE, "").strip()[:MAX_ID]
    if session_id and session_id.isalnum():
        return Shopper(customer_id=customer_id, session_id=session_id)
    return Shopper(customer_id=customer_id, session_id=f"sf{secrets.token_hex(12)}", new_session=True)


def _remember_session(response: HttpResponse, shopper: Shopper) -> HttpResponse:
    if shopper.new_session:
        response.set_cookie(SESSION_COOKIE, shopper.session_id, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Lax")
    return response


@dataclass
class _PickerCache:
    at: float = 0.0
    customers: list[tuple[str, int]] = field(default_factory=list)


_picker = _PickerCache()


def demo_customers(request: HttpRequest) -> list[tuple[str, int]]:
    """The most active customers with their purchase counts, for the picker: ``GET /v1/customers?ordering=-activity``
    like any storefront would, kept in memory for a few minutes. An API failure leaves the picker empty (the page
    still renders) and is asked again on the next page."""
    now = time.monotonic()
    if _picker.customers and now - _picker.at < PICKER_TTL_SECONDS:
        return _picker.customers
    try:
        page = api_get(request, "/v1/customers", {"ordering": "-activity", "limit": PICKER_SIZE})
    except ApiError:
        return []
    _picker.customers = [(str(row["customer_id"]), int(row["purchases"])) for row in page.get("results", [])]
    _picker.at = now
    return _picker.customers


def clear_caches() -> None:
    """Forget the keys and the picker list (tests reset the database between runs)."""
    global _keys
    with _keys_lock:
        _keys = None
    _picker.customers = []
    _picker.at = 0.0


def _base_context(request: HttpRequest, shopper: Shopper) -> dict[str, Any]:
    customers = [
        (customer_id, f"Customer {customer_id} · {purchases:,} purchase{'s' if purchases != 1 else ''}")
        for customer_id, purchases in demo_customers(request)
    ]
    if shopper.customer_id and shopper.customer_id not in {customer_id for customer_id, _ in customers}:
        customers.insert(0, (shopper.customer_id, f"Customer {shopper.customer_id}"))
    return {
        "shopper": shopper,
        "customers": customers,
        "next": request.get_full_path(),
        "admin_url": reverse("admin:index"),
    }


def _events_config(request: HttpRequest, shopper: Shopper, **extra: str) -> dict[str, str]:
    # The browser gets the events-only key: it can send events and nothing else. Embedding a key in a page is
    # acceptable for this local demo; a real storefront would send events from its own backend or a proxy.
    return {
        "eventsUrl": reverse("events"),
        "key": storefront_keys().browser,
        "customerId": shopper.customer_id,
        "sessionId": shopper.session_id,
        **extra,
    }


# --- Views --------------------------------------------------------------------------------------------------


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """Personalised recommendations with their reasons, and "because you viewed" rows for a known customer."""
    shopper = _shopper(request)
    category = request.GET.get("category", "").strip()[:MAX_ID]
    context = _base_context(request, shopper)
    recommendations: Row | None = None
    anchor_rows: list[Row] = []
    meta: dict[str, Any] = {}
    error = ""
    try:
        body = api_get(
            request, "/v1/recommendations",
            {"customer_id": shopper.customer_id, "session_id": shopper.session_id, "count": HOME_COUNT,
             "surface": "category" if category else "home", "category": category},
        )  # fmt: skip
        heading = f"Recommended in {category_label(category)}" if category else "Recommended for you"
        recommendations = Row(
            heading=heading, request_id=body["request_id"],
            cards=_cards(body["items"], request_id=body["request_id"], surface=body.get("surface", "home")),
        )  # fmt: skip
        meta = {key: body.get(key) for key in ("model_version", "variant", "experiment", "degraded")}
    except ApiError as exc:
        error = exc.message
    except (KeyError, TypeError):
        error = "The recommendations came back in a shape we did not expect."
    if shopper.customer_id and not category and not error:
        try:
            groups = api_get(
                request, f"/v1/customers/{urllib.parse.quote(shopper.customer_id, safe='')}/because-you-viewed",
                {"count": ROW_COUNT},
            )  # fmt: skip
            anchor_rows = [
                Row(
                    heading=group["reason"]["text"],
                    request_id=groups["request_id"],
                    anchor_item_id=group["anchor_item_id"],
                    cards=_cards(group["items"], request_id=groups["request_id"], surface="because_you_viewed"),
                )  # fmt: skip
                for group in groups.get("groups", [])
                if group.get("items")
            ]
        except (ApiError, KeyError, TypeError):
            anchor_rows = []  # a secondary row: the page is still useful without it
    context |= {
        "recommendations": recommendations,
        "anchor_rows": anchor_rows,
        "category": category,
        "category_label": category_label(category),
        "meta": meta,
        "error": error,
        # The cards' "not interested" controls send dismiss events with the page's events-only key.
        "events_config": _events_config(request, shopper),
    }
    return _remember_session(render(request, "storefront/home.html", context), shopper)


def _similar_widget(request: HttpRequest, shopper: Shopper, item_id: str) -> dict[str, Any]:
    """The item's similar items for this shopper, as one widget of a page (its request_id and items)."""
    owner = {"customer_id": shopper.customer_id, "session_id": shopper.session_id}
    page = api_post(
        request, "/v1/pages",
        {**{k: v for k, v in owner.items() if v}, "context_item_id": item_id,
         "widgets": [{"kind": "similar", "count": ROW_COUNT}]},
    )  # fmt: skip
    widget: dict[str, Any] = page["widgets"][0]
    return widget


@require_safe
def item_detail(request: HttpRequest, item_id: str) -> HttpResponse:
    """An item with "similar items" and "frequently bought together"; the page sends a view (and a click when
    reached from a recommendation) and has add-to-cart and buy buttons that send real events."""
    shopper = _shopper(request)
    item_id = item_id[:MAX_ID]
    quoted = urllib.parse.quote(item_id, safe="")
    context = _base_context(request, shopper)
    try:
        if id_problem(item_id):
            # No item has such an id, and one ending in "/similar" would fetch a sub-resource instead of an item.
            raise ApiError(_friendly(404), status=404)
        item = api_get(request, f"/v1/items/{quoted}")
    except ApiError as exc:
        context |= {"error": "We could not find that item." if exc.status == 404 else exc.message}
        response = render(request, "storefront/item.html", context, status=404 if exc.status == 404 else 503)
        return _remember_session(response, shopper)
    rows: list[Row] = []
    for path, heading, surface in (
        ("similar", "Similar items", "similar"),
        ("bought-together", "Frequently bought together", "bought_together"),
    ):
        try:
            if path == "similar" and (shopper.customer_id or shopper.session_id):
                # For a shopper, the page's similar widget (POST /v1/pages): it leaves out what they dismissed
                # ("not interested") or bought, which the item endpoint, knowing no owner, cannot.
                body = _similar_widget(request, shopper, item_id)
            else:
                body = api_get(request, f"/v1/items/{quoted}/{path}", {"count": ROW_COUNT})
            cards = _cards(body["items"], request_id=body["request_id"], surface=surface)
            rows.append(Row(heading=heading, request_id=body["request_id"], cards=cards))
        except (ApiError, KeyError, TypeError, IndexError):
            rows.append(Row(heading=heading, request_id="", cards=()))
    # Only a 32-hex request id from our own links is echoed into the page and the events.
    request_id = request.GET.get("rid", "")
    if not (len(request_id) <= 64 and request_id.isalnum()):
        request_id = ""
    title = item.get("title") or item_id
    description = (item.get("description") or "").strip()
    context |= {
        "item": item,
        "title": title,
        # The demo's descriptions are the title in capitals; show one only when it says more.
        "description": description if description.casefold() != title.casefold() else "",
        "price": _price(item.get("price")),
        "category": item.get("category") or "",
        "category_label": category_label(item.get("category")),
        "rows": rows,
        "events_config": _events_config(request, shopper, itemId=item["item_id"], requestId=request_id),
    }
    return _remember_session(render(request, "storefront/item.html", context), shopper)


@require_POST
def customer_choose(request: HttpRequest) -> HttpResponse:
    """The picker: remember the chosen demo customer ("" = anonymous visitor) in a cookie, go back."""
    customer_id = request.POST.get("customer_id", "").strip()[:MAX_ID]
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=False):
        target = reverse("storefront:home")
    response = HttpResponseRedirect(target)
    if customer_id:
        response.set_cookie(CUSTOMER_COOKIE, customer_id, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Lax")
    else:
        response.delete_cookie(CUSTOMER_COOKIE, samesite="Lax")
    return response
