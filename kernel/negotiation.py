"""Content negotiation with a fast path for what API clients send (shared kernel: imports no app of ours).

DRF's negotiation parses the Accept header and ranks media types on every request, a noticeable share of a cached
list's time (issue 18). Requests with no Accept header, ``*/*`` or exactly the first renderer's media type, and no
``format`` override, get that renderer directly, with the media type DRF would have chosen; every other request
is negotiated by DRF as before (including its 406).
"""

from __future__ import annotations

from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.settings import api_settings


class FastContentNegotiation(DefaultContentNegotiation):
    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        if renderers and not format_suffix:
            first = renderers[0].media_type
            if request.META.get("HTTP_ACCEPT", "*/*").strip() in ("*/*", first) and (
                api_settings.URL_FORMAT_OVERRIDE not in request.query_params
            ):
                return renderers[0], first
        return super().select_renderer(request, renderers, format_suffix)
