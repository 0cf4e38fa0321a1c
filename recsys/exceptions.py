"""API error responses: DRF's JSON bodies for every client error, and no HTML 500 page for API clients.

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


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is not None:
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
    if isinstance(exc, redis.RedisError):
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
