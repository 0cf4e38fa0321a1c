"""Health, readiness (database, Redis, a real Celery worker), metrics, schema and docs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from kernel import redis_client
from recsys import health
from recsys.tasks import heartbeat


def test_healthz_answers_without_dependencies() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_readyz_reports_every_dependency_ready(celery_worker: object) -> None:
    heartbeat.delay().get(timeout=30)
    health.reset()
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "redis", "worker"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["worker"]["heartbeat_age_seconds"] < 60
    assert body["checks"]["worker"]["affects_readiness"] is False


@pytest.mark.django_db(transaction=True)
def test_a_task_runs_on_the_real_worker(celery_worker: object) -> None:
    before = time.time()
    heartbeat.delay().get(timeout=30)
    stamp = float(redis_client.get().get(redis_client.WORKER_HEARTBEAT_KEY))
    assert stamp >= before - 1


@pytest.mark.django_db
def test_metrics_exposes_prometheus_text() -> None:
    Client().get("/healthz")
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert b"django_http_requests_total_by_view_transport_method_total" in response.content


@pytest.mark.django_db
def test_metrics_with_a_scrape_token_need_it() -> None:
    with override_settings(METRICS_TOKEN="s3cret"):
        assert Client().get("/metrics").status_code == 401
        assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
        response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
        assert response.status_code == 200
        assert b"django_http_requests_total_by_view_transport_method_total" in response.content


@pytest.mark.django_db
def test_openapi_schema_and_docs_are_served() -> None:
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/v1/items/{item_id}" in paths
    assert Client().get("/api/docs/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_task_and_quality_metrics_are_exposed(celery_worker: object) -> None:
    from kernel.metrics import quality_set

    heartbeat.delay().get(timeout=30)
    quality_set({"recsys_catalog_coverage": {"window=24h": 0.42}})
    text = Client().get("/metrics").content.decode()
    assert 'recsys_celery_tasks_total{state="success",task="recsys.tasks.heartbeat"}' in text
    assert 'recsys_catalog_coverage{window="24h"} 0.42' in text


@pytest.mark.django_db
def test_probes_by_pod_address_are_answered_whatever_the_allowed_hosts(settings: Any) -> None:
    """A Kubernetes probe or a Prometheus scrape sends the pod's address as Host; no ALLOWED_HOSTS lists it, and
    /healthz, /readyz and /metrics answered 400 pages with a traceback each in the log (a ninth tester, 6 December).
    Every other path still checks the Host header."""
    settings.ALLOWED_HOSTS = ["recs.example.com"]
    client = Client(HTTP_HOST="10.1.2.3:8000")
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] in ("ready", "degraded")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert b"recsys_" in metrics.content
    assert client.get("/v1/recommendations").status_code == 400
    assert client.get("/admin/login/").status_code == 400


# What django.middleware.security.SecurityMiddleware adds to every answer under these settings (HSTS: over HTTPS).
SECURITY_HEADERS = ("X-Content-Type-Options", "Referrer-Policy", "Cross-Origin-Opener-Policy")
PROBES = ("/healthz", "/readyz", "/metrics")


@pytest.mark.django_db
def test_probe_answers_carry_the_security_headers_of_every_other_answer(settings: Any) -> None:
    """The probe middleware answered before SecurityMiddleware ran, so its answers went without the headers every
    other answer has (a reviewer, 6 December)."""
    settings.ALLOWED_HOSTS = ["recs.example.com"]
    settings.SECURE_HSTS_SECONDS = 3600
    api = Client(HTTP_HOST="recs.example.com").get("/v1/no-such-resource")
    expected = {name: api[name] for name in SECURITY_HEADERS}
    assert expected == {
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
    }  # fmt: skip
    by_pod = Client(HTTP_HOST="10.1.2.3:8000")
    for path in PROBES:
        response = by_pod.get(path)
        assert response.status_code == 200, path
        assert {name: response.get(name) for name in SECURITY_HEADERS} == expected, path
        assert "Strict-Transport-Security" not in response  # plain HTTP, as for any other path
        assert by_pod.get(path, secure=True)["Strict-Transport-Security"] == "max-age=3600", path


@pytest.mark.django_db
def test_probes_by_pod_address_over_plain_http_under_production_settings(settings: Any) -> None:
    """Production redirects plain HTTP to HTTPS (SecurityMiddleware, which now runs before the probes) except for
    the probes, which load balancers send over plain HTTP inside the cluster: they still answer, by pod address."""
    settings.ALLOWED_HOSTS = ["recs.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # recsys/settings/prod.py
    by_pod = Client(HTTP_HOST="10.1.2.3:8000")
    assert by_pod.get("/healthz").json() == {"status": "ok"}
    assert by_pod.get("/readyz").status_code == 200
    assert by_pod.get("/metrics").status_code == 200
    assert Client(HTTP_HOST="recs.example.com").get("/v1/recommendations").status_code == 301


def _scraped(client: Client, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with ``labels`` in a scrape of /metrics (0 before its first count)."""
    text = client.get("/metrics").content.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


@pytest.mark.django_db
def test_probes_are_counted_in_the_request_metrics(settings: Any) -> None:
    """django-prometheus counts responses by status, view and method, and their latency, in the last middleware,
    which a probe never reached: /healthz and /readyz moved no request metric (a reviewer, 6 December). They are
    counted under their URL name, by pod address too."""
    settings.ALLOWED_HOSTS = ["recs.example.com"]
    scraper = Client(HTTP_HOST="10.1.2.3:8000")
    by_status = "django_http_responses_total_by_status_view_method_total"
    latency = "django_http_requests_latency_seconds_by_view_method_count"
    for view in ("healthz", "readyz"):
        before = _scraped(scraper, by_status, status="200", view=view, method="GET")
        timed_before = _scraped(scraper, latency, view=view, method="GET")
        for _ in range(3):
            assert scraper.get(f"/{view}").status_code == 200
        assert _scraped(scraper, by_status, status="200", view=view, method="GET") == before + 3, view
        assert _scraped(scraper, latency, view=view, method="GET") == timed_before + 3, view
    # The scrapes themselves, each counted once (after its own answer was written, so in the next scrape).
    first = _scraped(scraper, by_status, status="200", view="metrics", method="GET")
    assert _scraped(scraper, by_status, status="200", view="metrics", method="GET") == first + 1
