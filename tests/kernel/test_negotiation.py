"""kernel.negotiation.FastContentNegotiation chooses what DRF's own negotiation chooses, 406 and 404 included, and
refuses what an Accept header refuses with q=0 (through the API, on the real servers)."""

from __future__ import annotations

import pytest
from django.http import Http404
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from kernel.negotiation import FastContentNegotiation


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", " application/json ", "application/json; indent=4", "text/html",
     "application/xml", "text/html, */*;q=0.8", "", "application/*"],
)  # fmt: skip
@pytest.mark.parametrize("query", ["", "?format=json", "?format=api", "?count=3"])
@pytest.mark.parametrize("renderers", [[JSONRenderer()], [JSONRenderer(), BrowsableAPIRenderer()]])
def test_it_chooses_what_drf_chooses(accept: str | None, query: str, renderers: list[object]) -> None:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().get(f"/v1/recommendations{query}", **headers))

    def choose(negotiation: DefaultContentNegotiation) -> object:
        try:
            renderer, media_type = negotiation.select_renderer(request, renderers)
        except NotAcceptable:
            return "406"
        except Http404:  # a ?format= no renderer has
            return "404"
        return type(renderer), media_type

    assert choose(FastContentNegotiation()) == choose(DefaultContentNegotiation())


# --- Quality values (an eleventh tester, 6 December: "Accept: application/json;q=0" was answered 200) -------------

REFUSING_JSON = [
    "application/json;q=0",
    "application/json; q=0.0",
    "application/json;Q=0.000",
    "*/*;q=0",
    "application/*;q=0",
    "application/json;q=0, */*",  # the most specific range decides
    "application/json;q=0, application/*;q=1, */*;q=1",
    "application/json;q=0, text/html",
    "text/html, application/json;q=0",
    "application/json;q=-1",  # below 0: as 0
]
TAKING_JSON = [
    "application/json;q=0.001",
    "application/json;q=0.5, text/html;q=1",
    "text/html;q=0, */*",
    "text/csv;q=0, application/json",
    "application/*;q=0, application/json",  # more specific than the refusal
    "application/json;q=0, application/json;q=1",  # equally specific: the better quality
    "application/json;q=abc",  # no number: ignored, as before
    "application/json;q=nan",
    "application/json;q=",
    "*/*;q=0.5",
]
MALFORMED = [";q=0", "q=0", "/;q=0", "application/json;;q=0", "application/json;q", ",,,", "a/b/c;q=0", "*/*;q=0;q=1"]


@pytest.mark.parametrize("accept", REFUSING_JSON)
def test_a_quality_of_0_refuses_json_as_any_other_unacceptable_accept_header(api: APIClient, accept: str) -> None:
    unacceptable = api.get("/v1/recommendations", HTTP_ACCEPT="text/csv")
    assert unacceptable.status_code == 406

    response = api.get("/v1/recommendations", HTTP_ACCEPT=accept)

    assert response.status_code == 406, response.content
    assert response["Content-Type"] == unacceptable["Content-Type"] == "application/json"
    assert response.json() == unacceptable.json() == {"detail": "Could not satisfy the request Accept header."}
    body = api.post("/v1/pages", {"widgets": [{"kind": "recommendations"}]}, format="json", HTTP_ACCEPT=accept)
    assert body.status_code == 406
    assert body.json() == unacceptable.json()


@pytest.mark.parametrize("accept", TAKING_JSON)
def test_json_at_a_quality_above_0_is_served(api: APIClient, accept: str) -> None:
    response = api.get("/v1/recommendations", HTTP_ACCEPT=accept)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/json")
    assert "items" in response.json()


@pytest.mark.parametrize("accept", MALFORMED)
def test_a_malformed_accept_header_is_never_a_server_error(api: APIClient, accept: str) -> None:
    response = api.get("/v1/recommendations", HTTP_ACCEPT=accept)
    assert response.status_code in (200, 406), response.content
    assert response["Content-Type"].startswith("application/json")


# Headers without a range of quality 0: negotiated exactly as DRF negotiates them.
NO_REFUSAL = [
    "application/json;q=0.001", "application/json;q=0.5, text/html;q=1", "application/json;q=abc",
    "application/json;q=nan", "application/json;q=", "*/*;q=0.5", "application/json;q", ",,,", "text/html;q=1",
]  # fmt: skip


@pytest.mark.parametrize("accept", NO_REFUSAL)
def test_without_a_quality_of_0_it_chooses_what_drf_chooses(accept: str) -> None:
    request = Request(APIRequestFactory().get("/v1/recommendations", HTTP_ACCEPT=accept))

    def choose(negotiation: DefaultContentNegotiation) -> object:
        try:
            renderer, media_type = negotiation.select_renderer(request, [JSONRenderer(), BrowsableAPIRenderer()])
        except NotAcceptable:
            return "406"
        return type(renderer), media_type

    assert choose(FastContentNegotiation()) == choose(DefaultContentNegotiation())


def test_a_refused_type_is_left_to_the_next_renderer() -> None:
    request = Request(APIRequestFactory().get("/v1/x", HTTP_ACCEPT="application/json;q=0, */*"))
    renderer, media_type = FastContentNegotiation().select_renderer(request, [JSONRenderer(), BrowsableAPIRenderer()])
    assert (type(renderer), media_type) == (BrowsableAPIRenderer, "text/html")
