"""Liveness (/healthz: the process answers) and readiness (/readyz: can THIS web process serve requests?).

Readiness answers what a load balancer needs to know, cheaply enough that any number of probes cannot starve the
API (docs/operations.md, "Load balancer"):

* ``200 {"status": "ready"}``: Postgres and Redis both answer.
* ``200 {"status": "degraded"}``: one of them is down. Serving was built to degrade then, and every web process
  sees the same outage, so taking this one out of the pool would only turn degraded answers into none: with Redis
  down lists are computed from Postgres and events stored in Postgres (rebuilt into Redis afterwards); with
  Postgres down API keys verified within ``API_KEY_STALE_SECONDS`` keep working and cached or Redis-backed lists
  keep answering, while writes answer 503 with Retry-After.
* ``503 {"status": "not ready"}``: neither answers; this process cannot authenticate a request or serve a list.

No Celery worker is contacted: serving needs none. The worker's liveness is reported from the heartbeat the beat
schedules every minute (``worker.heartbeat_age_seconds``, read from Redis in the same call as the Redis check, and
the Prometheus gauge ``recsys_worker_heartbeat_age_seconds`` with its alert rule in docs/operations.md); it
never changes the status.

The checks run at most once per ``READINESS_CACHE_SECONDS`` per process: one probe runs them while concurrent
probes answer at once with the last result, so 16 probes in flight cost one ``SELECT 1`` and one Redis round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from django.core.handlers.exception import convert_exception_to_response
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import ResolverMatch

from kernel import redis_client

READINESS_CACHE_SECONDS = 1.0


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        # The broken connection is closed, so the next check connects afresh instead of reusing it.
        connection.close_if_unusable_or_obsolete()
        return {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _check_redis() -> tuple[dict[str, Any], dict[str, Any]]:
    """The Redis check and the worker's heartbeat age, in one round trip."""
    started = time.perf_counter()
    try:
        client = redis_client.get()
        if redis_client.is_cluster():  # a cluster pipeline refuses PING (a command of every node)
            client.ping()
            beat = client.get(redis_client.WORKER_HEARTBEAT_KEY)
        else:
            pipe = client.pipeline(transaction=False)
            pipe.ping()
            pipe.get(redis_client.WORKER_HEARTBEAT_KEY)
            _, beat = pipe.execute()
    except redis.RedisError as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__}, {"ok": None, "error": "Redis down"}
    checked = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
    if beat is None:
        return checked, {"ok": False, "heartbeat_age_seconds": None}
    age = max(0.0, time.time() - float(beat))
    return checked, {"ok": age <= WORKER_HEARTBEAT_STALE_SECONDS, "heartbeat_age_seconds": round(age, 1)}


# The beat schedules the heartbeat every minute: three missed beats mean no worker consumes the default queue.
WORKER_HEARTBEAT_STALE_SECONDS = 180


@dataclass(frozen=True)
class Readiness:
    status: str  # "ready", "degraded" or "not ready"
    checks: dict[str, dict[str, Any]]
    checked_at: float  # time.monotonic() of the check

    @property
    def http_status(self) -> int:
        return 503 if self.status == "not ready" else 200


def check() -> Readiness:
    """Run the checks now (no caching)."""
    database = _check_database()
    redis_check, worker = _check_redis()
    up = database["ok"] + redis_check["ok"]
    status = "ready" if up == 2 else "degraded" if up == 1 else "not ready"
    return Readiness(
        status=status,
        checks={"database": database, "redis": redis_check, "worker": {**worker, "affects_readiness": False}},
        checked_at=time.monotonic(),
    )


_last: Readiness | None = None
_check_lock = threading.Lock()


def current() -> Readiness:
    """The readiness of this process, at most ``READINESS_CACHE_SECONDS`` old. One thread checks at a time; the
    others answer with the last result instead of queueing (only the very first probes wait for a result)."""
    global _last
    last = _last
    if last is not None and time.monotonic() - last.checked_at < READINESS_CACHE_SECONDS:
        return last
    if not _check_lock.acquire(blocking=last is None):
        return last  # type: ignore[return-value]  # not None: a None result blocks above
    try:
        last = _last
        if last is None or time.monotonic() - last.checked_at >= READINESS_CACHE_SECONDS:
            last = _last = check()
        return last
    finally:
        _check_lock.release()


def reset() -> None:
    """Forget the last result (tests)."""
    global _last
    _last = None


def readyz(request: HttpRequest) -> JsonResponse:
    readiness = current()
    return JsonResponse({"status": readiness.status, "checks": readiness.checks}, status=readiness.http_status)


class ProbeMiddleware:
    """Answer ``/healthz``, ``/readyz`` and ``/metrics`` before anything reads the Host header.

    Kubernetes probes and Prometheus scrapes address a pod by its IP (``Host: 10.1.2.3:8000``), which no
    ``ALLOWED_HOSTS`` lists: Django's CommonMiddleware refused them with a 400 page and 14 log lines each, so pods
    never turned ready (a ninth tester, 6 December). These three answer nothing built from the Host header (no
    URLs, no redirects), so they need no check of it; every other path still gets one.

    Listed in MIDDLEWARE after SecurityMiddleware, so a probe's answer carries the security headers every answer
    does, and before CommonMiddleware, the first to read the Host header (nothing above it touches the database or
    Redis either). A probe never reaches the last middleware, the one that counts requests by status, view and
    latency, so it is counted here by that same middleware, labelled with its URL name (``view="healthz"``) as the
    URLconf would have labelled it: probes answered without those counts were invisible in the request metrics
    (a reviewer, 6 December).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        from kernel.metrics import metrics_view
        from kernel.middleware import PrometheusAfterMiddleware

        self.get_response = get_response
        views: dict[str, Callable[[HttpRequest], HttpResponse]] = {
            "healthz": healthz, "readyz": readyz, "metrics": metrics_view,
        }  # fmt: skip
        # What recsys/urls.py resolves each path to (the same URL names), without a walk through the URLconf.
        self.probes = {
            f"/{name}": ResolverMatch(view, (), {}, url_name=name, route=name) for name, view in views.items()
        }
        self.metrics = PrometheusAfterMiddleware(convert_exception_to_response(self._answer))

    def __call__(self, request: HttpRequest) -> HttpResponse:
        match = self.probes.get(request.path_info)
        if match is None:
            return self.get_response(request)
        request.resolver_match = match
        return self.metrics(request)

    def _answer(self, request: HttpRequest) -> HttpResponse:
        """The probe's view, with the metrics middleware's view and exception hooks run as Django's handler runs
        them (an exception then becomes Django's 500 answer, counted as one)."""
        match = request.resolver_match
        assert match is not None  # set by __call__
        self.metrics.process_view(request, match.func, match.args, match.kwargs)
        try:
            return match.func(request)
        except Exception as exc:
            self.metrics.process_exception(request, exc)
            raise
