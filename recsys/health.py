"""Liveness (/healthz: the process answers) and readiness (/readyz: database, Redis and a Celery worker reachable)."""

from __future__ import annotations

import time
from typing import Any

import redis
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse

from recsys import redis_client


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return {"ok": False, "error": str(exc).splitlines()[0]}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _check_redis() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        redis_client.get().ping()
    except redis.RedisError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _check_worker() -> dict[str, Any]:
    from recsys.celery import app

    try:
        replies = app.control.ping(timeout=1.0)
    except Exception as exc:  # noqa: BLE001 - any broker failure means "not ready", reported, not raised
        return {"ok": False, "error": str(exc)}
    if not replies:
        return {"ok": False, "error": "no Celery worker answered within 1 s"}
    return {"ok": True, "workers": sorted(name for reply in replies for name in reply)}


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "redis": _check_redis()}
    # The broker is that Redis: pinging workers through a dead broker only adds seconds of retries.
    checks["worker"] = _check_worker() if checks["redis"]["ok"] else {"ok": False, "error": "broker (Redis) down"}
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)
