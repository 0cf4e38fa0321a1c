"""Middleware for the browser-facing pages only (shared kernel: imports no app of ours).

Sessions, CSRF, the logged-in user, messages, framing and login lockouts serve the admin and the storefront pages.
The JSON API authenticates every request by its API key and uses none of them, yet running them cost every API
request about 0.04 ms, some 7% of a cached list's time in process (issue 18). :class:`BrowserMiddleware` stands
in MIDDLEWARE for the list ``BROWSER_MIDDLEWARE``: it runs that chain, hooks included, for every path except those
under ``API_PATH_PREFIXES``, which go straight on. Middleware every response needs (security headers, metrics) stays in
MIDDLEWARE itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import django_prometheus.middleware
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.exceptions import MiddlewareNotUsed
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

Handler = Callable[[HttpRequest], HttpResponseBase]


class BrowserMiddleware:
    """``settings.BROWSER_MIDDLEWARE`` (sync middleware, in MIDDLEWARE's order and meaning) for every path outside
    ``settings.API_PATH_PREFIXES``; built as Django builds MIDDLEWARE, with each one's ``process_view``,
    ``process_template_response`` and ``process_exception`` hooks run in Django's order."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        self.api_prefixes: tuple[str, ...] = tuple(settings.API_PATH_PREFIXES)
        self._view_hooks: list[Callable[..., Any]] = []
        self._template_hooks: list[Callable[..., Any]] = []
        self._exception_hooks: list[Callable[..., Any]] = []
        handler: Handler = get_response
        for path in reversed(settings.BROWSER_MIDDLEWARE):
            try:
                instance = import_string(path)(handler)
            except MiddlewareNotUsed:
                continue
            if hasattr(instance, "process_view"):
                self._view_hooks.insert(0, instance.process_view)
            if hasattr(instance, "process_template_response"):
                self._template_hooks.append(instance.process_template_response)
            if hasattr(instance, "process_exception"):
                self._exception_hooks.append(instance.process_exception)
            handler = convert_exception_to_response(instance)
        self._browser = handler
        # Django looks the hooks up on the instance: offered only when the chain has some.
        if self._view_hooks:
            self.process_view = self._process_view
        if self._template_hooks:
            self.process_template_response = self._process_template_response
        if self._exception_hooks:
            self.process_exception = self._process_exception

    def _is_api(self, request: HttpRequest) -> bool:
        return request.path_info.startswith(self.api_prefixes)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if self._is_api(request):
            return self.get_response(request)
        return self._browser(request)

    def _process_view(self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self._is_api(request):
            return None
        for hook in self._view_hooks:
            response = hook(request, view, args, kwargs)
            if response is not None:
                return response
        return None

    def _process_template_response(self, request: HttpRequest, response: Any) -> Any:
        if not self._is_api(request):
            for hook in self._template_hooks:
                response = hook(request, response)
        return response

    def _process_exception(self, request: HttpRequest, exception: Exception) -> Any:
        if self._is_api(request):
            return None
        for hook in self._exception_hooks:
            response = hook(request, exception)
            if response is not None:
                return response
        return None


# Django's own checks (admin.E408-E410, security.W002-W003) and django-axes' (axes.W002) look for these in
# MIDDLEWARE only, so settings silence them and this check asks for them where they now are: in MIDDLEWARE or in
# BROWSER_MIDDLEWARE behind BrowserMiddleware (the admin, its CSRF and framing protection and the login lockout need
# them on every browser path; the API is CSRF-exempt anyway, and a JSON answer is not framed).
REQUIRED_FOR_BROWSERS = (
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
)


@register(Tags.compatibility)
def check_browser_middleware(**_: Any) -> list[CheckMessage]:
    listed = list(settings.MIDDLEWARE)
    if f"{__name__}.BrowserMiddleware" in listed:
        listed += list(getattr(settings, "BROWSER_MIDDLEWARE", ()))
    return [
        Error(f"'{path}' must be in MIDDLEWARE or BROWSER_MIDDLEWARE (behind {__name__}.BrowserMiddleware).",
              id="kernel.E001")
        for path in REQUIRED_FOR_BROWSERS
        if path not in listed
    ]  # fmt: skip


class PrometheusAfterMiddleware(django_prometheus.middleware.PrometheusAfterMiddleware):
    """django-prometheus' after-middleware with every ``method`` label bounded: upstream (2.4) labels its latency
    histogram with the raw request method, so a client sending 2,000 made-up methods (even without a key, to
    ``/healthz``) added 25,000 series to ``/metrics`` (found by a fifth tester, 5 December). Its other metrics
    already map unknown methods to ``<invalid method>``; this maps them alike everywhere."""

    def label_metric(self, metric: Any, request: HttpRequest, response: Any = None, **labels: str) -> Any:
        if "method" in labels:
            labels["method"] = self._method(request)
        return super().label_metric(metric, request, response, **labels)
