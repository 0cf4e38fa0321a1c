"""Content negotiation with a fast path for what API clients send (shared kernel: imports no app of ours).

DRF's negotiation parses the Accept header and ranks media types on every request, a noticeable share of a cached
list's time (issue 18). Requests with no Accept header, ``*/*`` or exactly the first renderer's media type, and no
``format`` override, get that renderer directly, with the media type DRF would have chosen; every other request
is negotiated by DRF as before (including its 406), with one addition DRF lacks: the quality values.

A media range with ``q=0`` means "not acceptable" (RFC 9110, 12.4.2), and each renderer's media type is weighed by
the most specific range that matches it: ``application/json;q=0`` or ``application/json;q=0, */*`` refuses JSON,
so it is a 406 like ``Accept: text/csv`` (DRF ignored q and answered 200; an eleventh tester, 6 December), while
``text/html;q=0, */*`` still gets JSON. A quality that is no number (``q=abc``) is ignored, as before.
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.utils.mediatypes import _MediaType


def quality(media_range: _MediaType) -> float:
    """A media range's ``q`` (1 when absent, or when it is no finite number: a malformed one is ignored)."""
    raw = media_range.params.get("q")
    if raw is None:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        return 1.0
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 1.0


def acceptable(media_type: str, ranges: list[_MediaType]) -> bool:
    """Whether ``media_type`` (a renderer's) is acceptable under the Accept header's ``ranges``: some range matches it
    and the most specific of those (the best quality among equally specific ones) has a quality above 0."""
    renderer = _MediaType(media_type)
    matching = [r for r in ranges if renderer.match(r)]
    if not matching:
        return False
    most_specific = max(r.precedence for r in matching)
    return max(quality(r) for r in matching if r.precedence == most_specific) > 0


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
        ranges = [_MediaType(token) for token in super().get_accept_list(request)]
        if any(quality(r) == 0 for r in ranges):
            allowed = [renderer for renderer in renderers if acceptable(renderer.media_type, ranges)]
            if not allowed:
                raise NotAcceptable(available_renderers=renderers)
            renderers = allowed
        return super().select_renderer(request, renderers, format_suffix)

    def get_accept_list(self, request: Request) -> list[str]:
        """The Accept header's media ranges without those of quality 0 (they name what is refused: DRF would pick
        the first that matches)."""
        return [token for token in super().get_accept_list(request) if quality(_MediaType(token)) > 0]
