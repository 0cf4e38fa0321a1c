"""kernel.negotiation.FastContentNegotiation chooses what DRF's own negotiation chooses, 406 and 404 included."""

from __future__ import annotations

import pytest
from django.http import Http404
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

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
