"""Root URLs: the /v1/ API, its schema and docs, the admin, health and metrics."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from kernel.exceptions import json_error_view
from kernel.metrics import metrics_view
from privacy import api as privacy_api
from recsys import health
from storefront import customer_list

# An id in a path may hold "/" (kernel.urls, the "id" converter), so a route with a suffix after an id comes
# before the bare route of the same id, which would also match it: customers/<id>/export before customers/<id>,
# items/<id>/similar (ranking) before items/<id> (catalog).
api_v1 = [
    # The customer list counts activity from the interactions: a top-layer view (storefront/customer_list.py).
    path("customers", customer_list.CustomerListApi.as_view(), name="customer-list"),
    path("customers/<id:customer_id>/opt-out", privacy_api.CustomerOptOutApi.as_view(), name="customer-opt-out"),
    path("customers/<id:customer_id>/opt-in", privacy_api.CustomerOptInApi.as_view(), name="customer-opt-in"),
    path("customers/<id:customer_id>/export", privacy_api.CustomerExportApi.as_view(), name="customer-export"),
    path("", include("events.urls")),
    path("", include("experiments.urls")),
    path("", include("ranking.urls")),
    # Customer data rights: DELETE /v1/customers/{id} (erasure) reaches into every app, so its view is
    # privacy.api.CustomerApi, which keeps the catalog's GET/PUT of the same path and takes the path over.
    path("customers/<id:customer_id>", privacy_api.CustomerApi.as_view(), name="customer-data"),
    path("", include("catalog.urls")),
]

urlpatterns = [
    path("v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]
if settings.DEMO_ENABLED:  # the demo storefront (off in production: recsys/settings/prod.py)
    urlpatterns.append(path("", include("storefront.urls")))

if settings.BENCH_ENDPOINTS:
    from recsys.bench_views import FloorApi

    urlpatterns.append(path("bench/floor", FloorApi.as_view()))

# JSON errors on API paths (/v1/, /api/), Django's pages elsewhere (kernel/exceptions.py). Django uses these only
# with DEBUG off, which every served configuration has (docs/operations.md).
handler400 = json_error_view(400)
handler403 = json_error_view(403)
handler404 = json_error_view(404)
handler500 = json_error_view(500)
