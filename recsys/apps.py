from django.apps import AppConfig


class RecsysConfig(AppConfig):
    name = "recsys"
    verbose_name = "API access"

    def ready(self) -> None:
        from recsys import metrics, schema  # noqa: F401  (registers the OpenAPI auth extension, task metrics)

        # Serving labels its request metrics with the client's surface: only known ones by name.
        metrics.bound_serving_labels()
