"""Root URLs: the /v1/ API, its schema and docs, the admin, health and metrics."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from recsys import health
from recsys.metrics import metrics_view

api_v1 = [
    path("", include("catalog.urls")),
    path("", include("events.urls")),
    path("", include("experiments.urls")),
    path("", include("ranking.urls")),
]

urlpatterns = [
    path("v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("recsys.storefront_urls")),
]

if settings.BENCH_ENDPOINTS:
    from recsys.bench_views import FloorApi

    urlpatterns.append(path("bench/floor", FloorApi.as_view()))
