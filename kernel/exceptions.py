"""API error responses: DRF's JSON bodies for every client error, and no HTML 500 page for API clients.

Every error body is keyed by strings naming the field: DRF keys the errors of a list's elements by their integer
index (``{"tags": {0: [...]}}``), which the JSON renderer cannot write (it was a 500); :func:`error_paths` turns
them into paths (``{"tags[0]": [...]}``), in this one place for every serializer.

Errors Django answers outside DRF (no URL matched, a bad request before any view, an uncaught exception) are JSON
too on API paths (:func:`json_error_view` for ``handler400/403/404/500`` in recsys/urls.py); admin and storefront
pages keep Django's HTML pages.

A dependency that is down or too slow (Postgres unreachable, a statement cancelled by ``statement_timeout``, Redis
unreachable or timing out) is a retryable condition, not a bug in the request: ``503`` with ``Retry-After``. A value
Postgres refuses (``DataError``) is the request's: ``400``, never a 503 the client would retry forever.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, DataError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from redis.exceptions import RedisClusterException
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


def _unavailable() -> Response:
    return Response(
        {"detail": "The service is temporarily unavailable; retry shortly."},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def error_paths(errors: Any, prefix: str = "") -> Any:
    """DRF's error detail with every key a string: a dict keyed by element indices is flattened into its parent as
    ``"field[index]"`` (``{"tags": {0: ["…"]}}`` -> ``{"tags[0]": ["…"]}``); string keys are kept as they are."""
    if isinstance(errors, list):
        return [error_paths(error) for error in errors]
    if not isinstance(errors, dict):
        return errors
    flat: dict[str, Any] = {}
    for key, value in errors.items():
        if isinstance(key, str):
            name = f"{prefix}.{key}" if prefix else key
        else:
            name = f"{prefix}[{key}]"
        if isinstance(value, dict) and any(not isinstance(k, str) for k in value):
            flat.update(error_paths(value, name))
        else:
            flat[name] = error_paths(value)
    return flat


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is not None:
        response.data = error_paths(response.data)
        return response
    if isinstance(exc, DataError):
        # A value Postgres refuses to store (a NUL character, a number out of range): the request's fault, and
        # retrying it cannot help, so not a 503. Validation should have caught it; the log says where it did not.
        logger.error("api_data_error", exc_info=exc)
        return Response(
            {"detail": "The request contains a value that cannot be stored (for example a NUL character)."},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, DatabaseError):
        # Unreachable, or a statement cancelled by statement_timeout (QueryCanceled is an OperationalError).
        logger.error("api_database_error", exc_info=exc)
        return _unavailable()
    if isinstance(exc, redis.RedisError | RedisClusterException):
        # Only where Redis is required (an erasure, an export); the hot paths degrade without it instead.
        logger.error("api_redis_error", exc_info=exc)
        return _unavailable()
    if isinstance(exc, RequestDataTooBig):
        # Raised by Django when something reads HttpRequest.body past DATA_UPLOAD_MAX_MEMORY_SIZE.
        return Response(
            {"detail": f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    return None


# --- Errors outside DRF -------------------------------------------------------------------------------------

_API_PREFIXES = ("/v1/", "/api/")
_DJANGO_DEFAULTS = {
    400: defaults.bad_request,
    403: defaults.permission_denied,
    404: defaults.page_not_found,
    500: defaults.server_error,
}
_MESSAGES = {
    400: "Bad request.",
    403: "Permission denied.",
    404: "Not found: no API endpoint has this path (see /api/docs/).",
    500: "Internal server error.",
}


def is_api_path(path: str) -> bool:
    return path.startswith(_API_PREFIXES) or path.rstrip("/") == "/v1"


def json_error_view(status_code: int) -> Any:
    """A Django error handler: ``{"detail": …}`` with ``status_code`` for API paths, Django's page otherwise."""

    def view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if is_api_path(request.path):
            return JsonResponse({"detail": _MESSAGES[status_code]}, status=status_code)
        if status_code == 500:
            return defaults.server_error(request)
        return _DJANGO_DEFAULTS[status_code](request, exception)

    view.__name__ = f"json_error_{status_code}"
    return view
