"""Prometheus: the /metrics view (multi-process aware), Celery task metrics, and quality gauges.

Gauges that a Celery task computes (CTR, conversion, coverage, diversity, model age) live in one Redis hash; a
collector reads it at scrape time, so whichever web process is scraped reports the same figures. With gunicorn's
several workers, counters and histograms go through prometheus_client's multi-process mode
(``PROMETHEUS_MULTIPROC_DIR``, set by ``runstack``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator

import redis
from celery.signals import task_failure, task_postrun, task_prerun, task_retry
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from recsys import redis_client

logger = logging.getLogger(__name__)

QUALITY_KEY = "metrics:quality"

TASKS = Counter("recsys_celery_tasks_total", "Celery task outcomes.", ["task", "state"])
TASK_SECONDS = Histogram(
    "recsys_celery_task_seconds", "Celery task run time.", ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)  # fmt: skip

_started: dict[str, float] = {}


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


class QualityCollector(Collector):
    """Exposes the gauges stored by :func:`quality_set`; silent when Redis is unreachable."""

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
                family.add_metric([labels.get(label, "") for label in label_names], float(value))
            yield family


def metrics_view(request: HttpRequest) -> HttpResponse:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    output = generate_latest(registry)
    quality = CollectorRegistry()
    quality.register(QualityCollector())
    output += generate_latest(quality)
    return HttpResponse(output, content_type=CONTENT_TYPE_LATEST)
