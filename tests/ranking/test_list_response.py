"""A list's JSON answer: rendered straight into the response for plain JSON (the same bytes, content type and
headers as DRF's Response), through DRF for anything else negotiated."""

from __future__ import annotations

import orjson
import pytest
from drf_orjson_renderer.renderers import ORJSONRenderer
from rest_framework.test import APIClient

from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def items() -> None:
    for n in range(5):
        ItemFactory(external_id=f"sku-{n}")


@pytest.mark.usefixtures("items")
@pytest.mark.parametrize("path", ["/v1/recommendations", "/v1/items/sku-1/similar"])
def test_plain_json_is_rendered_straight_and_as_drf_would(api: APIClient, path: str) -> None:
    response = api.get(path, {"count": 3})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "GET" in response["Allow"]  # DRF's headers, as on its own responses
    assert not hasattr(response, "data")  # not a DRF Response: no renderer ran later
    assert response.content == ORJSONRenderer().render(orjson.loads(response.content), "application/json")

    indented = api.get(path, {"count": 3}, HTTP_ACCEPT="application/json; indent=4")
    assert indented.status_code == 200
    assert hasattr(indented, "data")  # negotiated with a parameter: DRF renders it, as before
    assert set(indented.json()) == set(response.json())
    assert api.get(path, {"count": 3}, HTTP_ACCEPT="text/html").status_code == 406
