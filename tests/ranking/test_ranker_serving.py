"""The LambdaMART ranker end to end: `manage.py train` ships it only when the pipeline with it beats every single
source on held-out users, and /v1/recommendations then orders the list by its scores (the debug trace says
which ranker scored the list); without a shipped ranker the blended retrieval score orders it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.test import override_settings
from rest_framework.test import APIClient

from events.services import online_state_rebuild
from experiments.models import SurfaceDefault
from experiments.services import assignment_cache_clear
from ranking import pipeline, rules, serving
from ranking.artifacts import get_active_model, loader
from ranking.compiled_ranker import ServingRanker
from ranking.models import ModelVersion
from ranking.training import TrainParams
from tests.ranking.ranker_world import PARAM_ARGS, new_arrivals_world


@pytest.fixture
def trained(tmp_path: Path, django_capture_on_commit_callbacks: Callable[..., Any]) -> Iterator[Callable[[], Any]]:
    """Train through the command (the Redis marker is published on commit), with fresh serving caches."""

    def train(*extra: str) -> ModelVersion:
        with django_capture_on_commit_callbacks(execute=True):
            call_command("train", "--quiet", *PARAM_ARGS, *extra)
        online_state_rebuild()  # the world's events were written straight to Postgres: histories into Redis
        serving.clear_caches()
        rules.reset()
        loader().reset()
        assignment_cache_clear()
        return ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)

    with override_settings(ARTIFACT_ROOT=tmp_path / "artifacts"):
        yield train


def _score_order_config() -> None:
    """Score order as served: no category cap and no exploration, so the re-ranker only drops and sorts."""
    SurfaceDefault.objects.create(surface="home", config={"diversity_cap": 1.0, "exploration_share": 0.0})
    assignment_cache_clear()


def _debug_list(admin_api: APIClient, customer: str) -> dict[str, Any]:
    response = admin_api.get("/v1/recommendations", {"customer_id": customer, "count": 10, "debug": "true"})
    assert response.status_code == 200, response.content
    return response.json()


def _assert_listed_in_trace_score_order(body: dict[str, Any]) -> None:
    trace_scores = {entry["item_id"]: entry["score"] for entry in body["debug"]["top_scores"]}
    served = [(item["item_id"], item["score"]) for item in body["items"]]
    assert len(served) == 10
    scores = [score for _, score in served]
    assert scores == sorted(scores, reverse=True)
    # Every listed item carries the score the ranking stage gave it (the trace's top 20 by that score).
    for item_id, score in served:
        assert trace_scores[item_id] == pytest.approx(score, abs=1e-6)


@pytest.mark.django_db
def test_a_shipped_ranker_scores_the_served_list(
    trained: Callable[[], ModelVersion], admin_api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = new_arrivals_world()
    version = trained()

    ranker = version.metrics["validation"]["ranker"]
    assert ranker["ships"] is True
    assert ranker["pipeline_ndcg"] >= ranker["best_single_source_ndcg"]
    model = get_active_model()
    assert model is not None
    assert model.has("ranker_model")
    shipped = pipeline.booster_from_array(model.array("ranker_model")).model_to_string()

    # Spy on (not replace) the scoring call: which booster scored which feature rows, and what it said.
    calls: list[tuple[str, np.ndarray]] = []
    real_score = ServingRanker.score

    def spy(ranker: ServingRanker, X: np.ndarray) -> np.ndarray:
        out = real_score(ranker, X)
        calls.append((ranker.booster.model_to_string(), out))
        return out

    monkeypatch.setattr(ServingRanker, "score", spy)
    _score_order_config()
    observer = world["observers"][0][0]
    body = _debug_list(admin_api, observer.external_id)

    assert body["debug"]["ranker"] == "lambdamart"
    assert len(calls) == 1
    booster_text, booster_scores = calls[0]
    assert booster_text == shipped
    # The trace's top scores are the booster's own outputs, best first ...
    top = np.sort(booster_scores)[::-1][: len(body["debug"]["top_scores"])]
    assert [entry["score"] for entry in body["debug"]["top_scores"]] == pytest.approx(top.tolist(), abs=1e-6)
    # ... and the list is in that order.
    _assert_listed_in_trace_score_order(body)
    # What it learnt: the observer's own category's new arrivals (never bought before the split) come first.
    own_new = {item.external_id for item in world["new"][0]}
    assert {item["item_id"] for item in body["items"][:3]} == own_new

    # Once the background compile is done the same ranker scores as machine code (lleaves): the same list, the same
    # scores, now said to come from the compiled engine.
    serving_ranker = serving._ranker_for(model)
    assert serving_ranker is not None
    assert serving_ranker.wait_compiled(timeout=120)
    again = _debug_list(admin_api, observer.external_id)
    assert again["debug"]["ranker_engine"] == "lleaves"
    assert [item["item_id"] for item in again["items"]] == [item["item_id"] for item in body["items"]]
    assert [e["score"] for e in again["debug"]["top_scores"]] == pytest.approx(
        [e["score"] for e in body["debug"]["top_scores"]], abs=1e-6
    )


@pytest.mark.django_db
def test_without_a_shipped_ranker_the_blend_orders_the_list(
    trained: Callable[[], ModelVersion], admin_api: APIClient
) -> None:
    # Four buyers per cluster: too few held-out users to learn a ranker from.
    world = new_arrivals_world(buyers_per_cluster=4, observers_per_cluster=1)
    # The pipeline by hand: left to itself, training may serve a single source that beats the blend here.
    version = trained("--param", "serve=pipeline")
    assert version.parameters["serve"] == "pipeline"

    ranker = version.metrics["validation"]["ranker"]
    assert ranker["ships"] is False
    model = get_active_model()
    assert model is not None
    assert not model.has("ranker_model")
    _score_order_config()
    body = _debug_list(admin_api, world["observers"][0][0].external_id)

    assert body["debug"]["ranker"] == "blend"
    _assert_listed_in_trace_score_order(body)


@pytest.mark.django_db
def test_ranker_ship_never_keeps_a_winning_ranker_out_of_the_version(
    trained: Callable[..., ModelVersion], admin_api: APIClient
) -> None:
    world = new_arrivals_world()
    # The pipeline by hand: without the ranker, the blend is not better with confidence than the best single
    # source here, so training would serve that source (the simpler choice).
    version = trained("--param", 'ranker_ship="never"', "--param", "serve=pipeline")

    ranker = version.metrics["validation"]["ranker"]
    assert ranker["beats_sources"] is True  # it would have shipped under the default rule ...
    assert ranker["ship_rule"] == "never"
    assert ranker["ships"] is False  # ... but the operator said never
    model = get_active_model()
    assert model is not None
    assert not model.has("ranker_model")
    _score_order_config()
    assert _debug_list(admin_api, world["observers"][0][0].external_id)["debug"]["ranker"] == "blend"


def test_ranker_ship_takes_only_its_three_values() -> None:
    assert TrainParams(ranker_ship="always").ranker_ship == "always"
    with pytest.raises(ValueError, match="ranker_ship"):
        TrainParams(ranker_ship="sometimes")
