"""Prometheus: the /metrics view (multi-process aware), Celery task metrics, and quality gauges.

Gauges that a Celery task computes (CTR, conversion, coverage, diversity, model age) live in one Redis hash; a
collector reads it at scrape time, so whichever web process is scraped reports the same figures. With gunicorn's
several workers, counters and histograms go through prometheus_client's multi-process mode
(``PROMETHEUS_MULTIPROC_DIR``, set by ``runstack``).

Label values that a client chooses (the ``surface`` of a recommendation request) are bounded: a metric labelled with
them goes through :func:`bound_labels`, which writes surfaces and variants that exist by name and anything else as
``other``, so 100 made-up surfaces add no series. The worker's liveness is the age of its heartbeat
(``recsys_worker_heartbeat_age_seconds``, read from Redis at scrape time), not a ping on a request path.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from celery.signals import task_failure, task_postrun, task_prerun, task_retry
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from kernel import redis_client

logger = logging.getLogger(__name__)

QUALITY_KEY = "metrics:quality"

TASKS = Counter("recsys_celery_tasks_total", "Celery task outcomes.", ["task", "state"])
TASK_SECONDS = Histogram(
    "recsys_celery_task_seconds", "Celery task run time.", ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)  # fmt: skip

_started: dict[str, float] = {}


def bound_labels(metric: MetricWrapperBase, **normalisers: Callable[[str], str]) -> MetricWrapperBase:
    """Make ``metric.labels(...)`` pass the named label values through their normaliser (e.g.
    ``bound_labels(REQUESTS, surface=metric_surface, variant=metric_variant)``), positional or keyword alike.
    Idempotent; returns the metric."""
    original: Callable[..., Any] = getattr(metric, "_unbounded_labels", metric.labels)
    names: tuple[str, ...] = tuple(metric._labelnames)
    unknown = set(normalisers) - set(names)
    if unknown:
        raise ValueError(f"{metric._name} has no label {sorted(unknown)}")

    def labels(*values: Any, **kwargs: Any) -> Any:
        if values:
            kwargs = dict(zip(names, values, strict=True))
        for name, normalise in normalisers.items():
            kwargs[name] = normalise(str(kwargs[name]))
        return original(**kwargs)

    metric._unbounded_labels = original  # type: ignore[attr-defined]
    metric.labels = labels  # type: ignore[method-assign]
    return metric


@task_prerun.connect
def _on_prerun(task_id: str, task: object, **_: object) -> None:
    _started[task_id] = time.perf_counter()


@task_postrun.connect
def _on_postrun(task_id: str, task: object, state: str | None = None, **_: object) -> None:
    name = getattr(task, "name", "unknown")
    started = _started.pop(task_id, None)
    if started is not None:
        TASK_SECONDS.labels(name).observe(time.perf_counter() - started)
    if state == "SUCCESS":
        TASKS.labels(name, "success").inc()


@task_failure.connect
def _on_failure(sender: object = None, **_: object) -> None:
    TASKS.labels(getattr(sender, "name", "unknown"), "failure").inc()


@task_retry.connect
def _on_retry(sender: object = None, **_: object) -> None:
    TASKS.labels(getattr(sender, "name", "unknown"), "retry").inc()


def quality_set(values: dict[str, dict[str, float]]) -> None:
    """Store computed gauges: ``{"metric_name": {"label=value,label=value": number}}`` (one Redis HSET)."""
    redis_client.get().hset(QUALITY_KEY, mapping={name: json.dumps(series) for name, series in values.items()})


def _every_surface_exists(surface: str) -> bool:
    return True


# Whether a surface label names a surface that exists. The kernel cannot know (experiments and ranking define
# surfaces): the project installs the answer at start-up (recsys.metric_labels, RecsysConfig.ready).
_surface_exists: Callable[[str], bool] = _every_surface_exists


def surface_filter_install(surface_exists: Callable[[str], bool]) -> None:
    """Leave out of the quality gauges the series of surfaces for which ``surface_exists`` says no."""
    global _surface_exists
    _surface_exists = surface_exists


class QualityCollector(Collector):
    """Exposes the gauges stored by :func:`quality_set`; silent when Redis is unreachable.

    The task computes them per surface as stored with each impression, i.e. as clients sent it: a series of a
    surface that does not exist (:func:`surface_filter_install`) is left out here (its lists still count in the
    ``surface="all"`` totals), so made-up surfaces add no series; ratios cannot be summed into one ``other``."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            stored = redis_client.get().hgetall(QUALITY_KEY)
        except redis.RedisError:
            return
        for raw_name, raw_series in sorted(stored.items()):
            name = raw_name.decode()
            series: dict[str, float] = json.loads(raw_series)
            label_names = sorted({part.split("=", 1)[0] for key in series for part in key.split(",") if part})
            family = GaugeMetricFamily(name, f"{name} (computed by a Celery task)", labels=label_names)
            for key, value in series.items():
                labels = dict(part.split("=", 1) for part in key.split(",") if part)
                surface = labels.get("surface")
                if surface is not None and surface != "all" and not _surface_exists(surface):
                    continue
                family.add_metric([labels.get(label, "") for label in label_names], float(value))
            yield family


class WorkerHeartbeatCollector(Collector):
    """``recsys_worker_heartbeat_age_seconds``: seconds since a Celery worker last ran the beat's one-minute
    heartbeat task (recsys.tasks.heartbeat). Absent when Redis is unreachable; ``+Inf`` when no heartbeat was ever
    stored (or it expired after an hour). The alert RecsysWorkerHeartbeatStale (docs/operations.md, "Alert rules")
    fires above 180 s."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            raw = redis_client.get().get(redis_client.WORKER_HEARTBEAT_KEY)
        except redis.RedisError:
            return
        age = math.inf if raw is None else max(0.0, time.time() - float(raw))
        family = GaugeMetricFamily(
            "recsys_worker_heartbeat_age_seconds", "Seconds since a Celery worker last ran the heartbeat task."
        )
        family.add_metric([], age)
        yield family


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Every process's counters and histograms, the quality gauges and the worker's heartbeat. With
    ``settings.METRICS_TOKEN`` set, only for a scrape that sends it as a bearer token (401 otherwise)."""
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            response = HttpResponse(b"metrics need the scrape token\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    output = generate_latest(registry)
    quality = CollectorRegistry()
    quality.register(QualityCollector())
    quality.register(WorkerHeartbeatCollector())
    output += generate_latest(quality)
    return HttpResponse(output, content_type=CONTENT_TYPE_LATEST)
