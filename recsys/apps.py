from django.apps import AppConfig


class RecsysConfig(AppConfig):
    name = "recsys"
    verbose_name = "Project"

    def ready(self) -> None:
        from django.contrib import admin

        from kernel import metrics, schema  # noqa: F401  (registers the OpenAPI auth extension, task metrics)
        from kernel.admin_utils import admin_site_input_safe
        from recsys import metric_labels

        # Serving labels its request metrics with the client's surface: only known ones by name. Installed by the
        # first request, not here: importing ranking.serving at start-up would cost every management command ~1 s.
        metric_labels.bound_serving_labels_on_first_request()
        metrics.surface_filter_install(metric_labels.surface_exists)
        # Every admin page's input may be typed or edited by hand: a value it cannot take is a message, never a 500.
        # Here, after the admin app's ready() imported every app's admin module (apps registered later than this,
        # such as axes, included).
        admin_site_input_safe(site=admin.site)
