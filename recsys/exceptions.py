"""API error responses: DRF's JSON bodies for every client error, and no HTML 500 page for API clients."""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is not None:
        return response
    if isinstance(exc, DatabaseError):
        # The database is unreachable or timed out: a retryable condition, not a bug in the request.
        logger.error("api_database_error", exc_info=exc)
        return Response(
            {"detail": "The service is temporarily unavailable; retry shortly."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    return None
