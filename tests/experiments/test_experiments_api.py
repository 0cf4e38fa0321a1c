"""GET /v1/experiments/{key}/results: admin scope only, the results as JSON."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from experiments import services
from experiments.models import Impression
from experiments.validation import VariantSpec
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def experiment_key(django_user_model: type[AbstractUser]) -> str:
    experiment = services.experiment_create(
        key="api-exp", name="API", surface="home", variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)]
    )
    services.experiment_start(experiment_id=experiment.pk, user_id=django_user_model.objects.create_user("m").pk)
    return experiment.key


def test_results_with_admin_scope(admin_api: APIClient, experiment_key: str) -> None:
    response = admin_api.get(f"/v1/experiments/{experiment_key}/results")

    assert response.status_code == 200
    body = response.json()
    assert body["key"] == "api-exp"
    assert body["status"] == "running"
    assert [v["name"] for v in body["variants"]] == ["control", "b"]
    assert set(body["variants"][1]) >= {"exposures", "ctr", "conversion_rate", "revenue_per_customer", "guardrails"}
    assert body["srm_flagged"] is False
    assert body["variants"][0]["ctr"]["value"] is None


def test_results_without_admin_scope_is_forbidden(api: APIClient, experiment_key: str) -> None:
    assert api.get(f"/v1/experiments/{experiment_key}/results").status_code == 403
    assert APIClient().get(f"/v1/experiments/{experiment_key}/results").status_code == 401


def test_unknown_experiment_is_404(admin_api: APIClient) -> None:
    assert admin_api.get("/v1/experiments/nope/results").status_code == 404


def test_forced_variant_header_serves_that_variant_and_keeps_it_out_of_the_results(
    admin_api: APIClient, api: APIClient, experiment_key: str
) -> None:
    for _ in range(5):
        ItemFactory()
    # A customer the hash puts in the control: only the header can serve them "b".
    customer = next(
        f"qa-{i}" for i in range(100) if services.assign(surface="home", unit_id=f"qa-{i}").variant == "control"
    )

    forced = admin_api.get(
        "/v1/recommendations", {"customer_id": customer, "surface": "home"},
        HTTP_X_EXPERIMENT_VARIANT=f"{experiment_key}:b",
    )  # fmt: skip
    hashed = api.get("/v1/recommendations", {"customer_id": customer, "surface": "home"})

    assert forced.status_code == 200, forced.content
    assert (forced.json()["experiment"], forced.json()["variant"]) == (experiment_key, "b")
    assert (hashed.json()["experiment"], hashed.json()["variant"]) == (experiment_key, "control")
    services.impressions_flush()
    stored = {row.request_id: row for row in Impression.objects.all()}
    assert stored[forced.json()["request_id"]].experiment_id is None  # logged, but not as the experiment's traffic
    assert stored[hashed.json()["request_id"]].variant.name == "control"
    by_name = {v["name"]: v for v in admin_api.get(f"/v1/experiments/{experiment_key}/results").json()["variants"]}
    assert (by_name["control"]["impressions"], by_name["b"]["impressions"]) == (1, 0)


def test_a_forced_variant_naming_nothing_running_is_a_400_naming_the_header(
    admin_api: APIClient, api: APIClient, experiment_key: str
) -> None:
    """It was a 200 with the hashed arm, so a QA run with a typo measured the wrong variant without knowing."""
    for value in ("nope:nope", "nope", f"{experiment_key}:nope", "other-exp:b"):
        response = admin_api.get("/v1/recommendations", {"customer_id": "qa-1"}, HTTP_X_EXPERIMENT_VARIANT=value)

        assert response.status_code == 400, (value, response.content)
        assert list(response.json()) == ["X-Experiment-Variant"]
    # The experiment runs on "home": on another surface its variant names nothing running either.
    other_surface = admin_api.get(
        "/v1/recommendations", {"customer_id": "qa-1", "surface": "cart"},
        HTTP_X_EXPERIMENT_VARIANT=f"{experiment_key}:b",
    )  # fmt: skip
    assert other_surface.status_code == 400
    # The variant alone, as it runs on the surface, still serves it; without the admin scope no value is read.
    assert admin_api.get("/v1/recommendations", HTTP_X_EXPERIMENT_VARIANT="b").json()["variant"] == "b"
    assert api.get("/v1/recommendations", HTTP_X_EXPERIMENT_VARIANT="nope:nope").status_code == 403
