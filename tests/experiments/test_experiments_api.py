"""GET /v1/experiments/{key}/results: admin scope only, the results as JSON."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from experiments import services
from experiments.validation import VariantSpec

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
