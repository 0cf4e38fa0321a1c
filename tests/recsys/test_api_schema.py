"""Real answers of the API validated against its own OpenAPI schema (``/api/schema/``) with an OpenAPI 3.0 validator
(openapi-schema-validator, as a client integrating the API would): the lists, the "because you viewed" groups, a
page, an export, a dry run, an experiment's results with its control arm, and error bodies. Stricter than the
fuzzing (tests/recsys/test_fuzz_api.py), whose validator reads ``nullable`` loosely and allows keys the schema does
not list: here ``nullable`` means what OAS 3.0.3 says, every status must be documented with its body, and every
key of an answer must be in the schema. On a small trained world and the real Postgres and Redis."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.test import Client
from openapi_schema_validator import OAS30ReadValidator, oas30_format_checker
from rest_framework.test import APIClient

from experiments import services as experiments
from experiments.validation import VariantSpec
from ranking import dry_run
from ranking.artifacts import loader
from ranking.models import ModelVersion
from ranking.serializers import REASON_CODES
from ranking.serving import VERBS
from tests.worlds import trained_world_fixtures

CLUSTERS = (("wool", "scarf"), ("ceramic", "mug"), ("garden", "seed"))

world, _fresh = trained_world_fixtures(clusters=CLUSTERS, per_cluster=10, seed=11, rebuild_online_state=True)


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to any other key (the schema leaves them open,
    so that adding a key is no breaking change; an answer's key missing from it is what this module looks for)."""
    if isinstance(schema, list):
        return [_closed(value) for value in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if isinstance(closed.get("properties"), dict) and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The served schema (needs no database), read as a client generator reads it."""
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def conforms(openapi: dict[str, Any]) -> Callable[..., Any]:
    """``conforms(response, "GET", "/v1/items/{item_id}", closed=True)``: the response's status is documented for the
    operation, with its content type, and its body validates against that response's schema (OAS 3.0 semantics,
    formats checked; ``closed``: no key the schema does not list). Returns the body."""
    components = {False: openapi["components"], True: _closed(openapi["components"])}

    def check(response: Any, method: str, path: str, *, closed: bool = True) -> Any:
        documented = openapi["paths"][path][method.lower()]["responses"]
        status = str(response.status_code)
        raw = b"".join(response.streaming_content) if response.streaming else response.content
        assert status in documented, f"{method} {path}: {status} is not documented ({sorted(documented)}): {raw!r}"
        content = documented[status].get("content")
        if content is None:
            assert raw == b""
            return None
        media_type = response["Content-Type"].split(";")[0]
        assert media_type in content, f"{method} {path} {status}: {media_type} is not documented"
        schema = content[media_type]["schema"]
        body = json.loads(raw)
        root = {**(_closed(schema) if closed else schema), "components": components[closed]}
        errors = sorted(
            OAS30ReadValidator(root, format_checker=oas30_format_checker).iter_errors(body),
            key=lambda error: list(map(str, error.absolute_path)),
        )
        assert not errors, f"{method} {path} {status}:\n" + "\n".join(
            f"  at /{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}" for error in errors
        )
        return body

    return check


def test_the_validator_holds_the_schema_to_oas_3_0_nullable() -> None:
    """What the tester met: drf-spectacular's ``allOf: [$ref], nullable: true`` refuses null under OAS 3.0.3. The
    validator here must read it so, or the tests below could not catch it."""
    schema = {"allOf": [{"$ref": "#/components/schemas/X"}], "nullable": True}
    root = {**schema, "components": {"schemas": {"X": {"type": "object", "properties": {}}}}}
    assert list(OAS30ReadValidator(root).iter_errors(None))


# --- The lists ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_lists_and_pages_validate(conforms: Callable[..., Any], api: APIClient, admin_api: APIClient) -> None:
    body = conforms(api.get("/v1/recommendations", {"customer_id": "u0-0", "count": 8}), "GET", "/v1/recommendations")
    assert body["items"]
    assert body["degraded"] is False
    cold = conforms(api.get("/v1/recommendations", {"session_id": "new-visit"}), "GET", "/v1/recommendations")
    assert cold["items"]
    debug = admin_api.get("/v1/recommendations", {"customer_id": "u1-0", "debug": "true", "surface": "cart"})
    assert "debug" in conforms(debug, "GET", "/v1/recommendations")
    conforms(api.get("/v1/items/scarf-1/similar", {"count": 5}), "GET", "/v1/items/{item_id}/similar")
    conforms(api.get("/v1/items/scarf-1/bought-together"), "GET", "/v1/items/{item_id}/bought-together")
    page = api.post(
        "/v1/pages",
        {"customer_id": "u0-1", "context_item_id": "scarf-2", "widgets": [
            {"kind": "recommendations", "count": 4}, {"kind": "because_you_viewed", "count": 3, "groups": 2},
            {"kind": "similar", "count": 4},
        ]},
        format="json",
    )  # fmt: skip
    assert [w["kind"] for w in conforms(page, "POST", "/v1/pages")["widgets"]] == [
        "recommendations", "because_you_viewed", "similar"
    ]  # fmt: skip


@pytest.mark.django_db
def test_because_you_viewed_validates_and_says_whether_it_was_degraded(
    conforms: Callable[..., Any], api: APIClient
) -> None:
    path = "/v1/customers/{customer_id}/because-you-viewed"
    body = conforms(api.get("/v1/customers/u2-3/because-you-viewed", {"count": 3}), "GET", path)
    assert body["groups"]
    assert body["degraded"] is False
    assert body["groups"][0]["reason"]["code"] == "because_you_bought"

    # Served without a model, as the item-anchored lists then are: degraded, and no groups.
    ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).update(status=ModelVersion.Status.RETIRED)
    loader().reset()
    without_model = conforms(api.get("/v1/customers/u2-3/because-you-viewed"), "GET", path)
    assert (without_model["degraded"], without_model["groups"], without_model["model_version"]) == (True, [], None)
    similar = conforms(api.get("/v1/items/scarf-1/similar"), "GET", "/v1/items/{item_id}/similar")
    assert similar["degraded"] is True


# --- Export, dry run, experiment results ----------------------------------------------------------------------------


def _export(api: APIClient) -> Any:
    for event in ({"type": "dismiss", "item_id": "mug-1"}, {"type": "view", "item_id": "mug-2"}):
        assert api.post("/v1/events", {"customer_id": "u1-2", **event}, format="json").status_code == 202
    response = api.get("/v1/customers/u1-2/export")
    assert response.status_code == 200
    return response


@pytest.mark.django_db
def test_the_export_validates(conforms: Callable[..., Any], api: APIClient) -> None:
    body = conforms(_export(api), "GET", "/v1/customers/{customer_id}/export", closed=False)
    assert body["interactions"]
    assert body["online"]["history"]


@pytest.mark.django_db
def test_the_export_lists_every_key_it_answers(conforms: Callable[..., Any], api: APIClient) -> None:
    conforms(_export(api), "GET", "/v1/customers/{customer_id}/export")


@pytest.mark.django_db
def test_a_dry_run_validates_queued_done_and_failed(
    conforms: Callable[..., Any], api: APIClient, admin_api: APIClient
) -> None:
    for customer in ("u0-0", "u1-0", "u2-0"):
        assert api.get("/v1/recommendations", {"customer_id": customer}).status_code == 200
    experiments.impressions_flush()  # the served lists a dry run replays

    started = admin_api.post("/v1/rules/dry-runs", {"config": {"diversity_cap": 0.5}, "days": 1, "sample": 10},
                             format="json")  # fmt: skip
    queued = conforms(started, "POST", "/v1/rules/dry-runs")
    assert (queued["status"], queued["rule_id"], queued["config"]) == ("queued", None, {"diversity_cap": 0.5})
    # What the Celery task does (tests/ranking/test_dry_run.py runs it on a real worker).
    dry_run.run_execute(run_id=queued["id"], rule_id=None, days=1.0, sample=10, config_changes=queued["config"])
    done = conforms(admin_api.get(f"/v1/rules/dry-runs/{queued['id']}"), "GET", "/v1/rules/dry-runs/{run_id}")
    assert done["status"] == "done"
    assert done["result"]["lists"] == 3
    assert isinstance(done["result"]["notes"], list)
    assert done["finished_at"] >= done["started_at"] >= done["queued_at"]

    dry_run.run_execute(run_id="run-bad", rule_id=999999, days=1.0, sample=10, config_changes={})
    failed = conforms(admin_api.get("/v1/rules/dry-runs/run-bad"), "GET", "/v1/rules/dry-runs/{run_id}")
    assert (failed["status"], failed["field"]) == ("failed", "rule_id")


@pytest.mark.django_db
def test_experiment_results_with_a_control_arm_validate(
    conforms: Callable[..., Any], api: APIClient, admin_api: APIClient, django_user_model: type[AbstractUser]
) -> None:
    experiment = experiments.experiment_create(
        key="schema-exp", name="Schema", surface="home",
        variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)],
    )  # fmt: skip
    experiments.experiment_start(experiment_id=experiment.pk, user_id=django_user_model.objects.create_user("m").pk)
    experiments.assignment_cache_clear()
    for n in range(12):
        body = api.get("/v1/recommendations", {"customer_id": f"u{n % 3}-{n}"}).json()
        click = {"customer_id": f"u{n % 3}-{n}", "item_id": body["items"][0]["item_id"], "type": "click",
                 "request_id": body["request_id"]}  # fmt: skip
        assert api.post("/v1/events", click, format="json").status_code == 202
    experiments.impressions_flush()

    results = conforms(admin_api.get("/v1/experiments/schema-exp/results"), "GET", "/v1/experiments/{key}/results")

    by_name = {variant["name"]: variant for variant in results["variants"]}
    control, other = by_name["control"], by_name["b"]
    assert control["is_control"] is True
    for metric in ("ctr", "conversion_rate", "add_to_cart_rate", "revenue_per_customer"):
        assert control[metric]["vs_control"] is None  # the null strict validators refused
        assert other[metric]["vs_control"] is not None


# --- Errors -------------------------------------------------------------------------------------------------------

_TOO_LARGE = '{"title": "' + "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE + '"}'
ERRORS = [
    # (method, path template, url, request arguments, the key's scopes (None: no key), status, the body's keys)
    ("GET", "/v1/recommendations", "/v1/recommendations", {"data": {"count": "x"}}, ("recommend",), 400, {"count"}),
    ("GET", "/v1/recommendations", "/v1/recommendations", {"HTTP_X_EXPERIMENT_VARIANT": "nope:nope"}, ("admin",),
     400, {"X-Experiment-Variant"}),
    ("GET", "/v1/recommendations", "/v1/recommendations", {"data": {"debug": "true"}}, ("recommend",), 403,
     {"detail"}),
    ("GET", "/v1/recommendations", "/v1/recommendations", {}, ("events",), 403, {"detail"}),
    ("GET", "/v1/recommendations", "/v1/recommendations", {}, None, 401, {"detail"}),
    ("GET", "/v1/recommendations", "/v1/recommendations", {"HTTP_ACCEPT": "text/html"}, ("recommend",), 406,
     {"detail"}),
    ("GET", "/v1/items/{item_id}", "/v1/items/NOPE", {}, ("catalog",), 404, {"detail"}),
    ("GET", "/v1/items/{item_id}", "/v1/items/%20x", {}, ("catalog",), 400, {"item_id"}),
    ("GET", "/v1/items/{item_id}/similar", "/v1/items/NOPE/similar", {}, ("recommend",), 404, {"detail"}),
    ("GET", "/v1/items/{item_id}/bought-together", "/v1/items/NOPE/bought-together", {}, ("recommend",), 404,
     {"detail"}),
    ("GET", "/v1/customers/{customer_id}", "/v1/customers/NOPE", {}, ("catalog",), 404, {"detail"}),
    ("PUT", "/v1/items/{item_id}", "/v1/items/sku-new",
     {"data": {"title": "", "price": -1, "tags": ["ok", "bad\x1b"]}, "format": "json"}, ("catalog",), 400,
     {"title", "price", "tags[1]"}),
    ("PUT", "/v1/items/{item_id}", "/v1/items/sku-new", {"data": "{", "content_type": "application/json"},
     ("catalog",), 400, {"detail"}),
    ("PUT", "/v1/items/{item_id}", "/v1/items/sku-new", {"data": "title=x", "content_type": "text/plain"},
     ("catalog",), 415, {"detail"}),
    ("PUT", "/v1/items/{item_id}", "/v1/items/sku-new", {"data": _TOO_LARGE, "content_type": "application/json"},
     ("catalog",), 413, {"detail"}),
    ("PUT", "/v1/customers/{customer_id}", "/v1/customers/c-new", {"data": {"attributes": 3}, "format": "json"},
     ("catalog",), 400, {"attributes"}),
    ("POST", "/v1/pages", "/v1/pages", {"data": {"widgets": [{"kind": "recommendations"}, {"kind": "similar",
     "item_id": "NOPE"}]}, "format": "json"}, ("recommend",), 400, {"widgets"}),
    ("POST", "/v1/pages", "/v1/pages", {"data": {"widgets": []}, "format": "json"}, ("recommend",), 400, {"widgets"}),
    ("GET", "/v1/rules/dry-runs/{run_id}", "/v1/rules/dry-runs/nope", {}, ("admin",), 404, {"detail"}),
    ("GET", "/v1/experiments/{key}/results", "/v1/experiments/nope/results", {}, ("admin",), 404, {"detail"}),
]  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path", "url", "arguments", "scopes", "status", "keys"),
    ERRORS,
    ids=[f"{status} {method} {url[:40]} {sorted(keys)[0]}" for method, _, url, _, _, status, keys in ERRORS],
)
def test_error_bodies_validate(
    conforms: Callable[..., Any], make_api_client: Callable[..., APIClient], method: str, path: str, url: str,
    arguments: dict[str, Any], scopes: tuple[str, ...] | None, status: int, keys: set[str],
) -> None:  # fmt: skip
    client = make_api_client(*scopes) if scopes else APIClient()
    response = getattr(client, method.lower())(url, **arguments)

    assert response.status_code == status, response.content
    assert set(conforms(response, method, path)) == keys


# --- Reason codes -------------------------------------------------------------------------------------------------


def test_the_reason_code_enum_is_every_code_the_pipeline_gives(openapi: dict[str, Any]) -> None:
    """``Reason(code, text)`` is built in ranking/pipeline/ with a literal code or ``f"because_you_{verb}"`` (a verb
    of VERBS): the schema's enum must hold each, and nothing the pipeline never gives."""
    assert openapi["components"]["schemas"]["ReasonCode"]["enum"] == list(REASON_CODES)
    given: set[str] = set()
    for module in (Path(__file__).parents[2] / "ranking" / "pipeline").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Reason" and node.args):
                continue
            code = node.args[0]
            if isinstance(code, ast.Constant):
                given.add(code.value)
            else:  # the one computed code: because_you_<verb>
                assert isinstance(code, ast.JoinedStr), f"{module.name}:{node.lineno}: a code the test cannot read"
                assert ast.unparse(code) == "f'because_you_{verb}'", f"{module.name}:{node.lineno}"
                given.update(f"because_you_{verb}" for verb in VERBS.values())
    assert given == set(REASON_CODES)
